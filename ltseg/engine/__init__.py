"""Training engine: the loop (trainer.py) and its helpers (distributed, checkpoint, optim,
logging, inference). Import the modules directly; this package imports nothing eagerly so that
light users (``ltseg.evaluate``, ``ltseg.calibrate``) stay fast to start."""
