"""The only subpackage that imports ray: Ray Train workers that run the continual loop (train.py), the
Ray Tune sweep over the controller and rehearsal settings (tune.py), fixed-config studies of methods and
ablations as Ray tasks (ablations.py), and joining or starting Ray for all three (cluster.py)."""
