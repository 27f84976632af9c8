"""Mesh and sharding, train state, the jitted step and the loop."""
