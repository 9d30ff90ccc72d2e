"""3D detection on the student's BEV map: a CenterPoint head (targets, losses, decoding)."""
