"""Many slides at once: ``histoview batch``, one Dask task per slide.

The layer after :mod:`histoview.training`; it runs
:func:`histoview.explain.slide_run.explain_slide` for each slide on a Dask distributed cluster
(an embedded ``LocalCluster`` or an existing scheduler) and keeps a summary table:

* :mod:`.inputs`: the slides (files, folders, CSV list files with labels);
* :mod:`.keys`: a slide's task key (its content hash and the settings' hash);
* :mod:`.task`: what a worker runs for one slide (outputs moved into place whole);
* :mod:`.summary`: the summary table (CSV and JSON), rewritten as slides finish;
* :mod:`.cluster`: the Dask client (LocalCluster, one worker per GPU, or ``--scheduler``);
* :mod:`.progress`: slides done / total, slides per hour, time left;
* :mod:`.run`: :func:`~histoview.batch.run.run_batch`, which ties them together.

Research use only, not for diagnosis.
"""
