"""3D object detection: CenterPoint on the student's BEV map (:mod:`.task`), its data
(:mod:`.data`) and the ground-truth sampling database (:mod:`.gt_sampling`)."""
