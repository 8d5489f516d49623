"""Evaluation of SANA-WM generations: camera accuracy (two conventions), video quality, benchmark sets, sweeps.

Modules: ``camera_metrics`` (RotErr / TransErr / CamMC), ``quality`` (PSNR, SSIM, LPIPS, FVD/FID, revisit and
temporal-window metrics), ``bench_set`` (benchmark case folders), ``estimator`` (the pose-estimator protocol),
``sweep`` (the ``python -m sana_wm.eval`` runner).
"""
