"""Planners that act with a learned dynamics model: MPC (MPPI, CEM) and Dyna (MBPO, MOPO, RAVL)."""
