"""Pictures of the pipeline's data and results, rendered headless (matplotlib Agg, no pyplot).

- :mod:`gpicture.viz.render`: ``gpicture show``: bird's-eye views of a frame's points and boxes,
  its I²Mask, its teacher features and its occupancy, and a range image for Waymo frames;
- :mod:`gpicture.viz.curves`: training and evaluation curves from dvclive's metric files;
- :mod:`gpicture.viz.study`: the label-efficiency study (metric vs label fraction per init, the
  seeds' spread as error bars) and every study run's learning curve.
"""
