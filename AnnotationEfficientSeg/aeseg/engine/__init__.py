"""The one training loop and everything around it: device, seeding, job folder,
events, checkpoints, cancellation, outputs."""
