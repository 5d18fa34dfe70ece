"""The only subpackage that imports ray: Ray Train workers that run the continual loop (train.py) and the
Ray Tune sweep over the controller and rehearsal settings (tune.py)."""
