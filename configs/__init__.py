"""Hydra configs, shipped as package data in worldmodel.configs."""
