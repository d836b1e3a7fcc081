"""Evaluation: a trained workdir and a labelled split -> metrics.json and pictures.

In: a workdir's model and a dataset folder. Out: the seed's MAE and the field's NME, failure
rate, CED and AUC (metrics), read beside the mean shape and the teacher's own floor
(yardsticks), written with pictures under the workdir's eval/ (evaluate). On whole photos, a
predictor end to end against the teacher run on each face's own region (photos).
"""
