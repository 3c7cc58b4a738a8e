"""The audit ("the receipt", DESIGN §5–6): fidelity, discriminability, mask adherence, utility and privacy of a
generator.

One idea per module:

- :mod:`.slices`       the 2D slice set every measure works on (images, masks, patient, vendor, group);
- :mod:`.stats`        ROC, AUC, TPR at low FPR, patient-level bootstrap confidence intervals;
- :mod:`.segmenter`    the MONAI segmenter the audit trains (cached per data fingerprint);
- :mod:`.features`     the in-domain feature space (FD-seg) and optional Inception features;
- :mod:`.fidelity`     Fréchet / kernel distances, MS-SSIM diversity, per-tissue intensity statistics;
- :mod:`.discriminability` a classifier two-sample test: can a CNN tell synthetic slices from real ones?
- :mod:`.adherence`    Dice / HD95 between conditioning masks and the segmenter's predictions;
- :mod:`.utility`      segmenters trained on real / synthetic / both, incl. the cross-vendor protocol;
- :mod:`.membership`   membership-inference attacks, calibrated on one split, reported on another;
- :mod:`.memorisation` nearest real neighbours of every synthetic image, near-copies;
- :mod:`.figures`, :mod:`.report`  figures, report.json and the self-contained report.html;
- :mod:`.run`          orchestration: :func:`~.run.run_audit`.
"""
