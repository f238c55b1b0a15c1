"""Offline datasets: both layouts round-trip, bad files are clear errors, scores, and the make command."""

from pathlib import Path

import h5py
import pytest
import torch

from worldmodel import collect, make_env, uniform_policy
from worldmodel.checkpoint import load_checked
from worldmodel.datasets import (DatasetError, fingerprint, load_dataset, main, normalized_score, save_d4rl,
                                 save_minari)
from planners.behaviour import policy_path
from worldmodel.replay import ReplayBuffer


@pytest.fixture(scope="module")
def hopper_data():
    env = make_env("hopper", seed=0)
    return collect(env, uniform_policy(env), 400)  # several episodes: uniform actions fall over quickly


def test_d4rl_layout_round_trips_transitions_and_metadata(hopper_data, tmp_path):
    save_d4rl(tmp_path / "d.hdf5", hopper_data, {"env": "hopper", "quality": "random", "history": [1, 2]})
    data, meta = load_dataset(tmp_path / "d.hdf5", obs_dim=11, act_dim=3)
    for key in hopper_data.keys():
        assert torch.equal(data[key], hopper_data[key]), key
    assert meta["env"] == "hopper" and meta["history"] == [1, 2]
    with h5py.File(tmp_path / "d.hdf5") as f:
        assert {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"} <= set(f)


def test_minari_layout_round_trips_by_episode(hopper_data, tmp_path):
    save_minari(tmp_path / "m", hopper_data, {"env": "hopper", "quality": "random"})
    data, meta = load_dataset(tmp_path / "m", obs_dim=11, act_dim=3)
    for key in hopper_data.keys():
        assert torch.equal(data[key], hopper_data[key]), key
    flags = int((hopper_data["terminated"] | hopper_data["truncated"]).sum())
    last_open = not (hopper_data["terminated"][-1] or hopper_data["truncated"][-1])
    assert meta["total_episodes"] == flags + last_open > 3
    assert meta["dataset_id"] == "worldmodel/hopper/random-v0" and meta["data_format"] == "hdf5"
    with h5py.File(tmp_path / "m" / "data" / "main_data.hdf5") as f:
        ep = f["episode_0"]
        assert len(ep["observations"]) == len(ep["actions"]) + 1
    with h5py.File(tmp_path / "m" / "data" / "main_data.hdf5", "r+") as f:
        _replace(f["episode_1"], "rewards", lambda a: a[:-1])
    with pytest.raises(DatasetError, match=r"episode_1 has \d+ actions but \{'rewards': \d+\}"):
        load_dataset(tmp_path / "m")


def test_a_fingerprint_names_the_transitions_whatever_the_layout(hopper_data, tmp_path):
    save_d4rl(tmp_path / "d.hdf5", hopper_data, {"env": "hopper", "quality": "random"})
    save_minari(tmp_path / "m", hopper_data, {"env": "hopper", "quality": "random"})
    same = {fingerprint(load_dataset(path)[0]) for path in (tmp_path / "d.hdf5", tmp_path / "m")}
    assert same == {fingerprint(hopper_data)} and len(same.pop()) == 16
    changed = hopper_data.clone()
    changed["obs"][123, 4] += 1e-6
    flipped = hopper_data.clone()
    flipped["truncated"][5] = ~flipped["truncated"][5]
    assert len({fingerprint(hopper_data), fingerprint(changed), fingerprint(flipped)}) == 3
    # a file whose transitions are not the ones its metadata's fingerprint names is refused
    save_d4rl(tmp_path / "x.hdf5", changed, {"env": "hopper", "fingerprint": fingerprint(hopper_data)})
    with pytest.raises(DatasetError, match="not the ones `make` wrote"):
        load_dataset(tmp_path / "x.hdf5")


def test_a_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(DatasetError, match="worldmodel.datasets make"):
        load_dataset(tmp_path / "nope.hdf5")


def test_corrupt_and_truncated_files_are_clear_errors(hopper_data, tmp_path):
    (tmp_path / "junk.hdf5").write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_dataset(tmp_path / "junk.hdf5")
    save_d4rl(tmp_path / "d.hdf5", hopper_data)
    raw = (tmp_path / "d.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_dataset(tmp_path / "cut.hdf5")


def _replace(f, key, change) -> None:
    data = change(f[key][()])
    del f[key]
    f.create_dataset(key, data=data)


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.__delitem__("rewards"), "lacks \\['rewards'\\]"),
    (lambda f: f["rewards"].__setitem__(5, float("nan")), "'reward' has non-finite values .* rows \\[5\\]"),
    (lambda f: (f.__delitem__("actions"), f.create_dataset("actions", data=torch.zeros(10, 3).numpy())), "different lengths"),
    (lambda f: _replace(f, "terminals", lambda a: (a.astype("float32") + 1) * 0.5),
     "terminated holds values other than 0 and 1"),
    (lambda f: _replace(f, "observations", lambda a: a.astype("int64")), "obs is torch.int64, not floating point"),
    (lambda f: (f.__delitem__("observations"), f.create_group("observations")), "is a group, not an array"),
])  # fmt: skip
def test_damaged_fields_are_named(hopper_data, tmp_path, damage, message):
    save_d4rl(tmp_path / "d.hdf5", hopper_data)
    with h5py.File(tmp_path / "d.hdf5", "a") as f:
        damage(f)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "d.hdf5")


def test_a_dataset_of_another_task_is_refused(hopper_data, tmp_path):
    save_d4rl(tmp_path / "d.hdf5", hopper_data)
    with pytest.raises(DatasetError, match="'obs' has shape \\[400, 11\\], expected \\[400, 17\\]"):
        load_dataset(tmp_path / "d.hdf5", obs_dim=17, act_dim=6)
    save_d4rl(tmp_path / "named.hdf5", hopper_data, {"env": "hopper", "quality": "random"})
    with pytest.raises(DatasetError, match="holds hopper transitions .* not walker2d's"):
        load_dataset(tmp_path / "named.hdf5", task="walker2d")
    assert len(load_dataset(tmp_path / "named.hdf5", task="Hopper-v5")[0]) == 400  # (a gymnasium id: the same task)


def test_data_is_collected_with_the_env_settings_its_runs_step_the_task_with(tmp_path):
    """make honours env.action_repeat (dm-control's default 2) and records it; a run with another
    repeat is refused, as is an older file (collected at repeat 1) read by a repeat-2 run."""
    main(["make", "env=dmc/cartpole-swingup", "quality=random", "size=520", f"out={tmp_path / 'c.hdf5'}"])
    data, saved = load_dataset(tmp_path / "c.hdf5", task="dmc/cartpole-swingup",
                               env={"name": "dmc/cartpole-swingup", "action_repeat": 2, "max_episode_steps": None})
    assert saved["env_args"] == {"action_repeat": 2}
    assert int(data["truncated"].sum()) == 1  # (an episode of 500 decisions, not 1,000 steps)
    with pytest.raises(DatasetError, match="collected with \\{'action_repeat': 2\\}, but this command steps the task with "
                                           "\\{'action_repeat': 1\\}"):  # fmt: skip
        load_dataset(tmp_path / "c.hdf5", task="dmc/cartpole-swingup", env={"name": "dmc/cartpole-swingup", "action_repeat": 1})
    old = {k: v for k, v in saved.items() if k != "env_args"}  # (a file from before the settings were recorded)
    save_d4rl(tmp_path / "old.hdf5", data, old)
    with pytest.raises(DatasetError, match="collected with"):
        load_dataset(tmp_path / "old.hdf5", task="dmc/cartpole-swingup", env={"name": "dmc/cartpole-swingup", "action_repeat": 2})


def test_normalized_score_uses_d4rl_reference_returns():
    assert normalized_score("hopper", -20.272305) == pytest.approx(0.0)
    assert normalized_score("halfcheetah", 12135.0) == pytest.approx(100.0)
    assert normalized_score("walker2d", (1.629008 + 4592.3) / 2) == pytest.approx(50.0)
    assert normalized_score("dmc/cheetah-run", 500.0) is None
    # not under other episode lengths or an action repeat (the references are 1000-step returns)
    assert normalized_score("hopper", 3234.3, {"max_episode_steps": 1000, "action_repeat": 1}) == pytest.approx(100.0)
    assert normalized_score("hopper", 3234.3, {"max_episode_steps": 500}) is None
    assert normalized_score("hopper", 3234.3, {"action_repeat": 2}) is None


def test_a_dataset_made_under_other_env_settings_has_no_normalised_score(tmp_path):
    meta = main(["make", "env=hopper", "env.max_episode_steps=50", "quality=random", "size=120",
                 f"out={tmp_path / 'short.hdf5'}"])  # fmt: skip
    assert "mean_normalized_score" not in meta and meta["episodes"] >= 1


def test_make_random_dataset(tmp_path, capsys):
    meta = main(["make", "env=hopper", "quality=random", "size=300", f"out={tmp_path / 'r.hdf5'}"])
    data, saved = load_dataset(tmp_path / "r.hdf5", obs_dim=11, act_dim=3)
    assert len(data) == 300 and saved["quality"] == "random" and meta["episodes"] > 3
    returns, running = [], 0.0  # the complete episodes' returns, summed row by row from the data
    for reward, ended in zip(data["reward"].tolist(), (data["terminated"] | data["truncated"]).tolist()):
        running += reward
        if ended:
            returns.append(running)
            running = 0.0
    assert saved["mean_episode_return"] == pytest.approx(sum(returns) / len(returns), rel=1e-5)
    assert saved["mean_normalized_score"] == pytest.approx(normalized_score("hopper", sum(returns) / len(returns)), rel=1e-5)
    assert saved["fingerprint"] == fingerprint(data) and f"fingerprint {fingerprint(data)}" in capsys.readouterr().out


def test_make_medium_replay_then_medium_expert_reuses_the_behaviour_run(tmp_path):
    common = ["env=hopper", "size=300", f"policy_dir={tmp_path / 'pol'}", "behaviour.start_steps=200",
              "behaviour.eval_every=200", "behaviour.eval_episodes=1", "behaviour.max_steps=400",
              "behaviour.medium_return=-1000", "behaviour.agent.hidden=32"]  # fmt: skip
    main(["make", "quality=medium-replay", f"out={tmp_path / 'mr.hdf5'}", *common])
    replay, meta = load_dataset(tmp_path / "mr.hdf5")
    assert len(replay) == 200  # everything the agent saw until its medium snapshot (first evaluation)
    checkpoint = tmp_path / "pol" / "hopper-seed0.pt"
    assert load_checked(checkpoint, "worldmodel.BehaviourRun")["state"]["step"] == 200
    main(["make", "quality=medium-expert", f"out={tmp_path / 'me.hdf5'}", *common])
    both, meta = load_dataset(tmp_path / "me.hdf5")
    assert len(both) == 600 and "medium_policy_return" in meta and "expert_policy_return" in meta
    assert [h["step"] for h in meta["behaviour_history"]] == [200, 400]  # resumed, not retrained


def test_a_saved_medium_policy_collects_the_same_data_without_training(tmp_path):
    """make writes the policy it collected from beside the dataset; make ... policy=<that file>
    gives the same transitions (the same seed) with no behaviour run, and another seed new ones."""
    common = ["env=hopper", "quality=medium", "size=300", "behaviour.start_steps=100", "behaviour.eval_every=100",
              "behaviour.eval_episodes=1", "behaviour.max_steps=200", "behaviour.medium_return=-1000",
              "behaviour.agent.hidden=32"]  # fmt: skip
    trained = main(["make", f"out={tmp_path / 'm.hdf5'}", f"policy_dir={tmp_path / 'runs'}", *common])
    policy = tmp_path / "m.medium-policy.pt"
    again = main(["make", f"out={tmp_path / 'again.hdf5'}", f"policy={policy}", f"policy_dir={tmp_path / 'none'}",
                  *common])  # fmt: skip
    assert not (tmp_path / "none").exists()  # no behaviour run
    assert again["fingerprint"] == trained["fingerprint"] and again["transitions"] == 300
    assert again["medium_policy_return"] == trained["medium_policy_return"]
    assert again["behaviour_history"] == trained["behaviour_history"] and again["policy_file"] == str(policy)
    assert again["reproduced"] is True  # (the file keeps its data's fingerprint and checks it)
    other = main(["make", f"out={tmp_path / 'other.hdf5'}", f"policy={policy}", "seed=1", *common])
    assert other["fingerprint"] != trained["fingerprint"] and "reproduced" not in other and other["policy_seed"] == 0


def test_each_policy_of_a_medium_expert_dataset_remakes_its_half(tmp_path):
    common = ["env=hopper", "size=150", "behaviour.start_steps=50", "behaviour.eval_every=50",
              "behaviour.eval_episodes=1", "behaviour.max_steps=100", "behaviour.medium_return=-1000",
              "behaviour.agent.hidden=16"]  # fmt: skip
    main(["make", "quality=medium-expert", f"out={tmp_path / 'me.hdf5'}", f"policy_dir={tmp_path}", *common])
    both, _ = load_dataset(tmp_path / "me.hdf5")
    for which, half in (("medium", both[:150]), ("expert", both[150:])):
        made = main(["make", f"quality={which}", f"out={tmp_path / (which + '.hdf5')}",
                     f"policy={tmp_path / f'me.{which}-policy.pt'}", *common])  # fmt: skip
        assert made["fingerprint"] == fingerprint(half) and made["reproduced"] is True, which


def test_policy_files_sit_beside_their_dataset():
    assert policy_path("data/x.hdf5", "medium") == Path("data/x.medium-policy.pt")
    assert policy_path("data/minari-x", "expert") == Path("data/minari-x.expert-policy.pt")  # a Minari directory
    assert policy_path("data/ds.v1", "medium") == Path("data/ds.v1.medium-policy.pt")


def test_a_policy_file_of_another_task_or_quality_is_refused(tmp_path):
    common = ["size=100", "behaviour.start_steps=50", "behaviour.eval_every=50", "behaviour.eval_episodes=1",
              "behaviour.max_steps=100", "behaviour.medium_return=-1000", "behaviour.agent.hidden=16"]  # fmt: skip
    main(["make", "env=hopper", "quality=medium", f"out={tmp_path / 'm.hdf5'}", f"policy_dir={tmp_path}", *common])
    policy = tmp_path / "m.medium-policy.pt"
    with pytest.raises(SystemExit, match="holds the hopper medium policy, not walker2d medium"):
        main(["make", "env=walker2d", "quality=medium", f"out={tmp_path / 'w.hdf5'}", f"policy={policy}", *common])
    with pytest.raises(SystemExit, match="holds the hopper medium policy, not hopper expert"):
        main(["make", "env=hopper", "quality=expert", f"out={tmp_path / 'e.hdf5'}", f"policy={policy}", *common])
    with pytest.raises(SystemExit, match="quality medium or expert, not medium-replay"):
        main(["make", "env=hopper", "quality=medium-replay", f"out={tmp_path / 'r.hdf5'}", f"policy={policy}", *common])
    with pytest.raises(SystemExit, match=r"acted under \{'action_repeat': 1\}, not \{'action_repeat': 2\}"):
        main(["make", "env=hopper", "env.action_repeat=2", "quality=medium", f"out={tmp_path / 'a.hdf5'}",
              f"policy={policy}", *common])  # fmt: skip
    broken = torch.load(policy, weights_only=True)
    del broken["which"], broken["fingerprint"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(SystemExit, match=r"missing \['which', 'fingerprint'\]"):
        main(["make", "env=hopper", "quality=medium", f"out={tmp_path / 'b.hdf5'}", f"policy={tmp_path / 'broken.pt'}",
              *common])  # fmt: skip
    with pytest.raises(SystemExit, match="not a readable worldmodel.BehaviourPolicy"):
        main(["make", "env=hopper", "quality=medium", f"out={tmp_path / 'x.hdf5'}", f"policy={tmp_path / 'm.hdf5'}",
              *common])  # fmt: skip


def test_a_medium_policy_never_reached_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="never reached medium_return 100000"):
        main(["make", "env=hopper", "quality=medium-expert", "size=10", f"out={tmp_path / 'x.hdf5'}",
              f"policy_dir={tmp_path}", "behaviour.max_steps=60", "behaviour.start_steps=40", "behaviour.eval_every=30",
              "behaviour.eval_episodes=1", "behaviour.medium_return=100000", "behaviour.agent.hidden=16"])  # fmt: skip


def test_a_larger_budget_continues_the_behaviour_run_it_did_not_reach_medium_in(tmp_path):
    common = ["make", "env=hopper", "quality=medium-replay", "size=10", f"out={tmp_path / 'x.hdf5'}",
              f"policy_dir={tmp_path}", "behaviour.start_steps=40", "behaviour.eval_every=30",
              "behaviour.eval_episodes=1", "behaviour.medium_return=100000", "behaviour.agent.hidden=16"]  # fmt: skip
    with pytest.raises(SystemExit, match="raise behaviour.max_steps: the run continues"):
        main([*common, "behaviour.max_steps=60"])
    run = load_checked(tmp_path / "hopper-seed0.pt", "worldmodel.BehaviourRun")
    run["state"]["history"][0]["marker"] = True  # (what a retrained run would not have)
    torch.save(run, tmp_path / "hopper-seed0-60.pt")  # as named before: still read
    (tmp_path / "hopper-seed0.pt").unlink()
    with pytest.raises(SystemExit, match="best so far"):
        main([*common, "behaviour.max_steps=90"])
    run = load_checked(tmp_path / "hopper-seed0.pt", "worldmodel.BehaviourRun")
    assert [h["step"] for h in run["state"]["history"]] == [30, 60, 90]  # continued from step 60, not retrained
    assert run["state"]["history"][0].get("marker")
    with pytest.raises(SystemExit, match="trained for 90 steps, beyond behaviour.max_steps=60"):
        main([*common, "behaviour.max_steps=60"])  # a run past the budget asked for is not used as if it fit
    buffer = ReplayBuffer.from_state_dict(run["buffer"])
    assert len(buffer) == 90 and buffer.capacity == 90  # every step kept (the buffer grew with the budget)


def test_a_resumed_behaviour_run_sees_the_transitions_an_uninterrupted_one_does(tmp_path):
    """Stopped at a checkpoint in the middle of an episode and continued, the behaviour run replays
    the episode under way and draws the next starts and its evaluations' from the saved random
    states: its data and evaluations are those of the run never stopped (a resumed run began a
    new episode from the first one's start, and evaluated from the first evaluation's starts)."""
    common = ["make", "env=hopper", "quality=medium-replay", "size=10", f"out={tmp_path / 'x.hdf5'}",
              "behaviour.start_steps=40", "behaviour.eval_every=30", "behaviour.eval_episodes=2",
              "behaviour.medium_return=100000", "behaviour.agent.hidden=16"]  # fmt: skip
    for policy_dir, budgets in (("split", (60, 120)), ("whole", (120,))):
        for budget in budgets:
            with pytest.raises(SystemExit, match="raise behaviour.max_steps"):
                main([*common, f"policy_dir={tmp_path / policy_dir}", f"behaviour.max_steps={budget}"])
            if budget == 60:  # (the check bites only if the run stopped in the middle of an episode)
                assert load_checked(tmp_path / "split" / "hopper-seed0.pt", "worldmodel.BehaviourRun")["envs"]["episode_start"] < 60
    split, whole = (load_checked(tmp_path / d / "hopper-seed0.pt", "worldmodel.BehaviourRun") for d in ("split", "whole"))
    assert [h["step"] for h in split["state"]["history"]] == [30, 60, 90, 120]
    assert split["state"]["history"] == whole["state"]["history"]  # (the same evaluation starts, the same agent)
    resumed, never_stopped = (ReplayBuffer.from_state_dict(run["buffer"]).data() for run in (split, whole))
    for key in never_stopped.keys():
        assert torch.equal(resumed[key], never_stopped[key]), key


def test_a_qualitys_data_does_not_depend_on_the_qualities_made_before_it(tmp_path):
    """Each policy's data is collected from the random state of its snapshot: medium made after
    expert (from the same behaviour run) is the medium made first, and medium-expert holds both."""
    common = ["env=hopper", "size=100", "behaviour.start_steps=50", "behaviour.eval_every=50",
              "behaviour.eval_episodes=1", "behaviour.max_steps=100", "behaviour.medium_return=-1000",
              "behaviour.agent.hidden=16"]  # fmt: skip
    first = main(["make", "quality=medium", f"out={tmp_path / 'm1.hdf5'}", f"policy_dir={tmp_path / 'a'}", *common])
    expert = main(["make", "quality=expert", f"out={tmp_path / 'e.hdf5'}", f"policy_dir={tmp_path / 'b'}", *common])
    after = main(["make", "quality=medium", f"out={tmp_path / 'm2.hdf5'}", f"policy_dir={tmp_path / 'b'}", *common])
    assert after["fingerprint"] == first["fingerprint"]
    main(["make", "quality=medium-expert", f"out={tmp_path / 'me.hdf5'}", f"policy_dir={tmp_path / 'b'}", *common])
    both, _ = load_dataset(tmp_path / "me.hdf5")
    assert fingerprint(both[:100]) == first["fingerprint"] and fingerprint(both[100:]) == expert["fingerprint"]


def test_one_behaviour_run_trains_in_one_process_at_a_time(tmp_path):
    from worldmodel.checkpoint import RunDirLock

    held = RunDirLock(tmp_path, guards="hopper-seed0.pt")  # (as another make training it holds it)
    with pytest.raises(SystemExit, match="hopper-seed0.pt is in use by process"):
        main(["make", "env=hopper", "quality=medium", "size=10", f"out={tmp_path / 'x.hdf5'}",
              f"policy_dir={tmp_path}", "behaviour.max_steps=60", "behaviour.start_steps=40"])  # fmt: skip
    held.release()
    RunDirLock(tmp_path, guards="walker2d-seed0.pt").release()  # (another task's run beside it is free)


def test_a_cached_behaviour_run_with_other_settings_is_not_reused(tmp_path):
    common = ["make", "env=hopper", "quality=medium-replay", "size=10", f"out={tmp_path / 'x.hdf5'}",
              f"policy_dir={tmp_path}", "behaviour.max_steps=60", "behaviour.start_steps=40", "behaviour.eval_every=30",
              "behaviour.eval_episodes=1", "behaviour.medium_return=-1000", "behaviour.agent.hidden=16"]  # fmt: skip
    main(common)
    with pytest.raises(SystemExit, match="other settings \\(agent, start_steps\\)"):
        main([*common, "behaviour.start_steps=20", "behaviour.agent.hidden=32"])


def test_make_refuses_an_out_of_the_wrong_kind_before_any_work(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit, match="is a directory: give a file"):  # (before an hour of behaviour training)
        main(["make", "env=hopper", "quality=medium", f"out={tmp_path / 'adir'}"])
    with pytest.raises(SystemExit, match="is a file: format=minari writes a directory"):
        main(["make", "env=hopper", "quality=medium", "format=minari", f"out={tmp_path / 'afile'}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"] and not any((tmp_path / "adir").iterdir())


def test_make_refuses_unknown_quality_and_missing_out(tmp_path):
    with pytest.raises(SystemExit, match="unknown quality 'great'"):
        main(["make", "env=hopper", "quality=great", f"out={tmp_path / 'x.hdf5'}"])
    with pytest.raises(SystemExit, match="out=<path>"):
        main(["make", "env=hopper", "quality=random"])
    with pytest.raises(SystemExit, match="usage"):
        main([])
    with pytest.raises(SystemExit, match="unknown format 'minnari'"):
        main(["make", "env=hopper", "quality=random", "format=minnari", f"out={tmp_path / 'x'}"])
    with pytest.raises(SystemExit, match="size must be a whole number >= 1, got 0"):
        main(["make", "env=hopper", "quality=medium", "size=0", f"out={tmp_path / 'x.hdf5'}"])
    for bad in ("eval_every=0", "eval_episodes=0", "max_steps=0"):  # (a division by zero minutes in, or an unnamed error)
        with pytest.raises(SystemExit, match=f"behaviour.{bad.split('=')[0]} must be a whole number >= 1, got 0"):
            main(["make", "env=hopper", "quality=medium", f"behaviour.{bad}", f"out={tmp_path / 'x.hdf5'}"])
    assert not list(tmp_path.iterdir())
