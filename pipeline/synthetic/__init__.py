"""Synthetic kidney-like slides in the Kaggle HuBMAP layout, for demos, tests and benchmarks.

A slide is planned once from its seed (tissue outlines and glomeruli: small object
lists) and then rendered tile by tile straight into a tiled TIFF: each output tile is
computed from the plan alone, with hash-based noise and per-cell tubules that do not
depend on the tile grid, so any slide size is made with memory bounded by one tile.

Content, in full-resolution pixels (~0.5 um/px like the HuBMAP slides):

- glass: near-white (~242) with faint noise;
- tissue: one large smooth irregular blob (or two, on slides >= 3000 px), pale
  eosin-pink interstitium with a slightly ragged edge;
- tubules: one per cell of a jittered 50 px grid, rotated ellipses 30-76 px across with a
  darker pink epithelial wall, a thin magenta basement membrane, nuclei and a pale lumen;
- glomeruli (~1 per mm^2 of tissue = 1 per 1e6 px^2): round, lobulated tufts, purple
  (haematoxylin-rich) with dense nuclei and pale capillary specks, inside a pale
  Bowman's space, a thin capsule wall and a tubule-free rim; outer diameter 150-300 px.

Label rule: the glomerulus mask is the tuft **plus Bowman's space**, i.e. everything
inside the outer edge of the pale ring; the capsule wall just outside it is not
labelled. The image draws that edge from the same analytic outline the polygon is
sampled from (vertices every ~3 px, sagitta < 0.01 px), so the drawn object and
its label agree to the pixel.

Modules, one job each (the public names are re-exported here):

* :mod:`pipeline.synthetic.noise` -- hash-based value / fractal noise and per-pixel grain.
* :mod:`pipeline.synthetic.palette` -- class labels, their colours, per-slide stain variation.
* :mod:`pipeline.synthetic.plan` -- the plan (:class:`~pipeline.synthetic.plan.SlidePlan`:
  tissue blobs and glomeruli) and :func:`plan_slide`.
* :mod:`pipeline.synthetic.render` -- :func:`render_tile`, any window of a plan as RGB.
* :mod:`pipeline.synthetic.tiff` -- :func:`write_synthetic_slide`, one slide as a tiled TIFF.
* :mod:`pipeline.synthetic.dataset` -- :func:`make_dataset` and :func:`slide_ids`, a data set
  in the Kaggle layout.
* :mod:`pipeline.synthetic.nuclei` -- :func:`make_nuclei_dataset`, touching nuclei (a third
  dark-field) in the Data Science Bowl 2018 layout, for ``data_layout: dsb2018``.
"""

from __future__ import annotations

from pipeline.synthetic.dataset import make_dataset, slide_ids
from pipeline.synthetic.nuclei import make_nuclei_dataset
from pipeline.synthetic.plan import plan_slide
from pipeline.synthetic.render import render_tile
from pipeline.synthetic.tiff import write_synthetic_slide

__all__ = ["make_dataset", "make_nuclei_dataset", "plan_slide", "render_tile", "slide_ids", "write_synthetic_slide"]
