r"""Accuracy on faces new to each predictor: k-fold cross-validation by source photo, one run.

  python -m tools.bench_accuracy [--folds=5] [--recipes=few_faces,...] [--json=PATH]
  python -m tools.bench_accuracy --quick      # a smoke test: 2 folds, few faces, 1 epoch
  python -m tools.bench_accuracy --recrops=2 --recipes=FILE  # recipes trained with re-crops

Data: every face of the one facekp dataset `tools.make_tfrecords` pools from the sources (cached
under --cache; `--images=../shared/data/aligned128,../shared/data/raw --align=0,128`): aligned128
as it is and raw through --align=128. When ../shared is absent, facekp/sample through --align=128
(said so in the output).

Folds keep together every face of one photo (splits_lib.group_key; a crop of aligned128 joins its
photo in raw through aligned128/index.csv) and every group of copies that make_tfrecords lists in
OUT/duplicates.json ({"groups": [[image_name, ...], ...]}) when that file exists. Each fold is
the test set once; the other folds train, with an inner validation part of their photos for
choices (ridge alpha, early stopping). Predictors, each scored on the test fold:
  mean shape          the train folds' mean keypoints for every face;
  teacher floor       MediaPipe against itself on the mirror (facekp's yardsticks);
  HOG + ridge         OpenCV HOG (8x8 cells, 16x16 blocks) of the grey face, ridge regression,
                      alpha chosen on the inner validation part;
  dlib 68             when dlib and libdlib-data are installed: iBUG points 30, 36, 48, 45, 54
                      (+0.5 px), on dlib's face box (the median box where dlib finds none); and
                      the same + a per-slot offset learned on the train folds, in the frame of
                      dlib's own eye corners (so it turns and scales with the face);
  each --recipes      trained on the train folds by facekp.train.loop, scored as is and with flip
                      TTA;
  ensemble            with two or more --recipes, the mean of their points (as is and with flip
                      TTA): what distilling them into one model could aim for.
With --recrops=K the recipes also train on K re-crops of each of their training faces read
through --align (make_tfrecords --recrops: the face's square jittered, each re-crop labelled by
the teacher), cut in a dataset of their own so that the faces, the folds and the other
predictors stay those of a run without them.
Figures: MAE px, NME (inter-ocular), FR>10 %, AUC@10 %, the share of the mean-shape -> teacher
floor gap closed (by NME), and the NME under evaluate's perturbed protocol (the same faces
rotated, zoomed and shifted); each as mean ± standard deviation over the folds.

Whole photos (--photos, on by default; facekp.eval.photos): the aligned-crop figures score crops
cut like the training data, users give whole photos. So each fold also takes its test photos
(the raw photos whose faces are in the test fold: a face read through --align names its photo,
an aligned128 crop names it in aligned128/index.csv; no face of such a photo was trained on) and
scores, on each, facekp's prediction end to end (facekp.load(workdir).predict: detection, crop,
model, points in the photo's pixels) of every --recipes model, and dlib (its own detector on the
photo, the 68 points' five slots + the fold's learned offset), against the teacher, Face Mesh on
each face's own region. A predicted face is matched to the teacher face nearest its box's centre
(one to one, within half a face size); the teacher faces none matches are misses. Figures: faces
found (share of the teacher's faces), NME (by the teacher's inter-ocular distance), MAE px (the
photo's pixels), FR>10 %, NME on the faces every photo predictor found, photo NME / aligned-crop
NME of the same predictor on the same fold (issue 22's goal: <= 1.2), extra faces (predicted faces
matched to none); mean ± standard deviation over the folds.
"""
import collections
import contextlib
import csv
import hashlib
import importlib.util
import json
import os
import posixpath
import time

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np

import facekp
from facekp.core import cli
from facekp.core import dataset_info
from facekp.core import files
from facekp.core import keypoint_csv
from facekp.core import keypoints as keypoints_lib
from facekp.core import sample
from facekp.data import annotate
from facekp.data import make_tfrecords
from facekp.data import shards
from facekp.data import sources as sources_lib
from facekp.data import splits as splits_lib
from facekp.eval import evaluate
from facekp.eval import metrics as metrics_lib
from facekp.eval import photos as photos_lib
from facekp.eval import yardsticks
from facekp.input import input_pipeline
from facekp.models import keypoint_model
from facekp.train import default_config
from facekp.train import loop as train_lib

SHARED_DATA = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "data"))
DUPLICATES_FILE = "duplicates.json"
INDEX_FILE = "index.csv"
INNER_VALIDATION = 0.12  # share of the train folds' photos held out for choices
RIDGE_ALPHAS = np.logspace(-3, 2, 11)  # times the mean diagonal of the Gram matrix
DLIB_MODEL = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat"
DLIB_SLOTS = (30, 36, 48, 45, 54)  # iBUG 68 points for facekp's slots 0..4
DLIB_EYES = (36, 45)
QUICK_FACES = 60
FIGURES = (("mae_px", "MAE px", 1.0, "{:.2f}"), ("nme", "NME", 100.0, "{:.2f}%"),
           ("failure_rate_0.10", "FR>10%", 100.0, "{:.1f}%"), ("auc_0.10", "AUC@10%", 1.0,
                                                               "{:.3f}"),
           ("gap_closed", "gap closed", 100.0, "{:.0f}%"),
           ("perturbed_nme", "perturbed NME", 100.0, "{:.2f}%"))
# The photo protocol's rows ("photos: <predictor>") and their figures.
PHOTO_ROW = "photos: "
PHOTO_FIGURES = (("faces_found", "faces found", 100.0, "{:.1f}%"),
                 ("nme", "NME", 100.0, "{:.2f}%"), ("mae_px", "MAE px", 1.0, "{:.2f}"),
                 ("failure_rate_0.10", "FR>10%", 100.0, "{:.1f}%"),
                 ("common_nme", "NME all found", 100.0, "{:.2f}%"),
                 ("nme_ratio", "photo/crop NME", 1.0, "{:.2f}"),
                 ("extra_faces", "extra faces", 1.0, "{:.1f}"))
DLIB_OFFSET = "dlib 68 + learned offset"


# --- Data ----------------------------------------------------------------------------------------


class Faces:
  """Every face of the bench: images uint8 [N,S,S,3], keypoints normalised [N,K,2], names
  ('<source>/<image name>'), groups (fold unit, [N] int), rows and the image roots to rewrite
  them as facekp datasets."""

  def __init__(self, images, keypoints, names, groups, rows, roots, schema, description):
    self.images, self.keypoints, self.names, self.groups = images, keypoints, names, groups
    self.rows, self.roots, self.schema, self.description = rows, roots, schema, description

  def subset(self, index):
    return Faces(self.images[index], self.keypoints[index], self.names[index],
                 self.groups[index], [self.rows[i] for i in index], self.roots, self.schema,
                 self.description)


def default_sources(shared=SHARED_DATA, only=()):
  """[(source name, images folder, align)] (those named in `only`, if any) and a sentence
  saying which data that is."""
  aligned, raw = f"{shared}/aligned128", f"{shared}/raw"
  sources = [(name, path, align) for name, path, align in
             (("aligned128", aligned, 0), ("raw", raw, 128))
             if os.path.isdir(path) and (not only or name in only)]
  if sources:
    return sources, f"the real faces of {shared} ({', '.join(s[0] for s in sources)})"
  return ([("sample", sample.SAMPLE_DIR, 128)],
          f"{shared} is absent: facekp/sample (9 photos) through --align=128 instead")


def build_source(sources, cache):
  """The one facekp dataset make_tfrecords pools from the sources (--images=A,B --align=0,128;
  its annotation reused by the next run). Returns (its folder, {source name: (its images' prefix
  in the dataset, the folder their names are paths under)}): facekp.data.sources names a pooled
  source's images '<prefix>/<image name>', the prefix its folder's name, under OUT/aligned; a
  dataset of one folder names them as they are (prefix ""), in the folder or OUT/aligned."""
  folders = [images_dir for _, images_dir, _ in sources]
  out = f"{cache}/{'+'.join(name for name, _, _ in sources)}"
  make_tfrecords.make_tfrecords(folders, out, align=[align for _, _, align in sources])
  aligned = f"{out}/{annotate.ALIGNED_DIR}"
  if len(sources) == 1:
    name, images_dir, align = sources[0]
    return out, {name: ("", aligned if align else images_dir)}
  return out, {name: (prefix, f"{aligned}/{prefix}")
               for (name, _, _), prefix in zip(sources, sources_lib.source_names(folders))}


def photo_keys(names, images_dir):
  """The source photo of each image: group_key, or aligned128/index.csv's photo for a crop."""
  index = {}
  if os.path.exists(f"{images_dir}/{INDEX_FILE}"):
    with open(f"{images_dir}/{INDEX_FILE}", newline="") as f:
      index = {row["crop"]: posixpath.splitext(row["photo"])[0] for row in csv.DictReader(f)}
  return [index.get(name, splits_lib.group_key(name)) for name in names]


def duplicate_groups(data_dir):
  """make_tfrecords' groups of copies ([[image_name, ...], ...]); [] without the file."""
  path = f"{data_dir}/{DUPLICATES_FILE}"
  if not os.path.exists(path):
    return None
  return files.read_json(path, "duplicate groups")["groups"]


def identical_pixels(images, names):
  """Groups of names whose images hold exactly the same pixels (copies the photo key misses)."""
  by_digest = collections.defaultdict(list)
  for image, name in zip(images, names):
    by_digest[hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()].append(name)
  return [group for group in by_digest.values() if len(group) > 1]


def merge_groups(keys, linked_names, names):
  """Group ids [N]: faces sharing a key, or named together in one of linked_names, share one."""
  parent = list(range(len(names)))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  def union(i, j):
    parent[find(i)] = find(j)

  first_of_key, position = {}, {name: i for i, name in enumerate(names)}
  for i, key in enumerate(keys):
    union(i, first_of_key.setdefault(key, i))
  for group in linked_names:
    members = [position[n] for n in group if n in position]
    for i in members[1:]:
      union(i, members[0])
  roots = [find(i) for i in range(len(names))]
  ids = {root: k for k, root in enumerate(dict.fromkeys(roots))}
  return np.array([ids[r] for r in roots], np.int64)


def load_faces(sources, cache, description):
  """Builds (or reuses) the sources' pooled facekp dataset and gathers all of its splits."""
  data_dir, located = build_source(sources, cache)
  schema = dataset_info.load_schema(data_dir)
  by_name = {r.image_name: r for r in keypoint_csv.read_keypoints_csv(
      f"{data_dir}/{dataset_info.CLEANED_CSV}", schema)}
  source_of_prefix = {prefix: name for name, (prefix, _) in located.items()}

  def source_and_name(dataset_name):
    """(source, image name in it) of an image name of the dataset."""
    if "" in source_of_prefix:
      return source_of_prefix[""], dataset_name
    prefix, name = dataset_name.split("/", 1)
    return source_of_prefix[prefix], name

  images, points, dataset_names = [], [], []
  for split in splits_lib.SPLITS:
    if not input_pipeline.num_examples(data_dir, split):
      continue
    arrays = input_pipeline.load_arrays(data_dir, split)
    images.append(arrays["images"])
    points.append(arrays["keypoints"])
    dataset_names += list(arrays["image_names"])
  parts = [source_and_name(n) for n in dataset_names]
  names = [f"{source}/{name}" for source, name in parts]
  rows = [by_name[n]._replace(image_name=name,  # the photo as named in its own folder
                              photo=by_name[n].photo and source_and_name(by_name[n].photo)[1])
          for n, name in zip(dataset_names, names)]
  keys = [None] * len(names)
  for source, images_dir, _ in sources:
    at = [i for i, (of, _) in enumerate(parts) if of == source]
    for i, key in zip(at, photo_keys([parts[i][1] for i in at], images_dir)):
      keys[i] = key
  groups = duplicate_groups(data_dir)
  if groups is None:
    linked = []
    note = f"no {DUPLICATES_FILE} (copies under other names may straddle folds)"
  else:
    linked = [["/".join(source_and_name(n)) for n in group] for group in groups]
    note = f"{len(groups)} groups of copies from {DUPLICATES_FILE}"
  names = np.array(names)
  images = np.concatenate(images)
  linked += identical_pixels(images, names)
  groups = merge_groups(keys, linked, list(names))
  description += f"; one dataset of {', '.join(s[0] for s in sources)}: {note}"
  roots = {name: root for name, (_, root) in located.items()}
  return Faces(images, np.concatenate(points), names, groups, rows, roots,
               schema, description)


def load_recrops(sources, faces, cache, recrops):
  """Faces of K re-crops of each face read through --align (make_tfrecords --recrops=K on each
  such source alone, every face in its train split; a run of its own, so that `faces` and their
  folds stay those of a run without re-crops), each in its face's group; named
  "<source>+recrops/<name>" (a root of their own). Re-crops of a face not among `faces` are left
  out."""
  group_of = dict(zip(faces.names.tolist(), faces.groups.tolist()))
  images, points, names, groups, rows, roots = [], [], [], [], [], {}
  for source, images_dir, align in sources:
    if not align:
      continue
    out = f"{cache}/{source}+recrops{recrops}"
    make_tfrecords.make_tfrecords(images_dir, out, align=align, recrops=recrops, split="1,0,0")
    roots[f"{source}+recrops"] = f"{out}/{annotate.ALIGNED_DIR}"
    by_name = {r.image_name: r for r in keypoint_csv.read_keypoints_csv(
        f"{out}/{dataset_info.CLEANED_CSV}", faces.schema)}
    arrays = input_pipeline.load_arrays(out, "train")
    for i, name in enumerate(arrays["image_names"]):
      face = f"{source}/{splits_lib.recropped_face(name)}"
      if splits_lib.is_recrop(name) and face in group_of:
        images.append(arrays["images"][i])
        points.append(arrays["keypoints"][i])
        names.append(f"{source}+recrops/{name}")
        groups.append(group_of[face])
        rows.append(by_name[name]._replace(image_name=names[-1]))
  description = f"{len(names)} re-crops ({recrops} a face of the sources with --align)"
  return Faces(np.array(images).reshape((-1,) + faces.images.shape[1:]),
               np.array(points, np.float32).reshape((-1,) + faces.keypoints.shape[1:]),
               np.array(names), np.array(groups, np.int64), rows, roots, faces.schema,
               description)


# --- Folds ---------------------------------------------------------------------------------------


def _hash(key):
  return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "big") / 2.0**64


def assign_folds(groups, num_folds):
  """Fold [N] per face: whole groups, largest first, each to the fold with fewest faces so far
  (ties by a hash of the group: a fixed, balanced assignment)."""
  sizes = collections.Counter(groups.tolist())
  order = sorted(sizes, key=lambda g: (-sizes[g], _hash(g)))
  load, fold_of = [0] * num_folds, {}
  for g in order:
    fold = min(range(num_folds), key=lambda f: (load[f], f))
    fold_of[g] = fold
    load[fold] += sizes[g]
  return np.array([fold_of[g] for g in groups.tolist()], np.int64)


def split_fold(groups, folds, fold):
  """(train, validation, test) indices of one fold: the test fold, and the other folds' photos
  split by a hash of their group into train and an inner validation part."""
  test = np.flatnonzero(folds == fold)
  rest = np.flatnonzero(folds != fold)
  inner = np.array([_hash(("validation", int(groups[i]))) < INNER_VALIDATION for i in rest])
  if not inner.any() or inner.all():  # tiny sets: one group aside all the same
    inner = groups[rest] == groups[rest][0]
  return rest[~inner], rest[inner], test


# --- Predictors ----------------------------------------------------------------------------------


def hog_features(images):
  size = images.shape[1]
  hog = cv2.HOGDescriptor((size, size), (16, 16), (8, 8), (8, 8), 9)
  return np.stack([hog.compute(cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY))
                   .ravel() for im in images]).astype(np.float64)


def ridge_fit(features, targets, alpha):
  """Dual ridge on centred data; returns a predict(features) function."""
  x_mean, y_mean = features.mean(0), targets.mean(0)
  x = features - x_mean
  gram = x @ x.T
  coef = np.linalg.solve(gram + alpha * np.mean(np.diag(gram)) * np.eye(len(x)),
                         targets - y_mean)
  weights = x.T @ coef
  return lambda f: (f - x_mean) @ weights + y_mean


def hog_ridge(features, keypoints, train, validation):
  """Ridge on HOG with alpha chosen on the inner validation part, refitted on both; returns
  (predict function, chosen alpha)."""
  flat = keypoints.reshape(len(keypoints), -1)
  errors = [np.abs(ridge_fit(features[train], flat[train], a)(features[validation])
                   - flat[validation]).mean() for a in RIDGE_ALPHAS]
  alpha = float(RIDGE_ALPHAS[int(np.argmin(errors))])
  both = np.concatenate([train, validation])
  predict = ridge_fit(features[both], flat[both], alpha)
  return lambda f: predict(f).reshape(len(f), -1, 2), alpha


def dlib_available():
  try:
    import dlib  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return "dlib is not installed (pip install dlib-bin)"
  if not os.path.exists(DLIB_MODEL):
    return f"{DLIB_MODEL} is missing (apt-get install libdlib-data)"
  return None


def dlib_points(images):
  """dlib's five points (pixels, +0.5) and its two eye corners per image, and the share of
  images where its detector found the face (the others use the median detected box)."""
  import dlib  # pylint: disable=import-outside-toplevel
  detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(DLIB_MODEL)
  boxes = []
  for image in images:
    found = detector(np.ascontiguousarray(image), 1)
    boxes.append(max(found, key=lambda r: r.area()) if len(found) else None)
  detected = [b for b in boxes if b is not None]
  size = images.shape[1]
  median = (np.median([[b.left(), b.top(), b.right(), b.bottom()] for b in detected], 0)
            if detected else np.array([0.15, 0.15, 0.85, 0.85]) * size)
  fallback = dlib.rectangle(*[int(round(v)) for v in median])
  points, eyes = [], []
  for image, box in zip(images, boxes):
    shape = predictor(np.ascontiguousarray(image), box or fallback)
    xy = np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], np.float64)
    points.append(xy[list(DLIB_SLOTS)])
    eyes.append(xy[list(DLIB_EYES)])
  return np.array(points), np.array(eyes), len(detected) / max(1, len(images))


def face_frame(eyes):
  """Origin (mid-eye) and the eye vector of each face [N, 2] each."""
  return 0.5 * (eyes[:, 0] + eyes[:, 1]), eyes[:, 1] - eyes[:, 0]


def to_face_frame(points, eyes):
  origin, axis = face_frame(eyes)
  d = points - origin[:, None]
  norm2 = (axis ** 2).sum(-1)[:, None]
  u = (d * axis[:, None]).sum(-1) / norm2
  v = (d[..., 0] * -axis[:, None, 1] + d[..., 1] * axis[:, None, 0]) / norm2
  return np.stack([u, v], -1)


def from_face_frame(uv, eyes):
  origin, axis = face_frame(eyes)
  normal = np.stack([-axis[:, 1], axis[:, 0]], -1)
  return origin[:, None] + uv[..., :1] * axis[:, None] + uv[..., 1:] * normal[:, None]


def learned_offset(dlib_px, eyes, labels_px, train):
  """Per-slot mean of label - dlib in dlib's eye frame over the train faces: [K, 2]."""
  return (to_face_frame(labels_px[train], eyes[train])
          - to_face_frame(dlib_px[train], eyes[train])).mean(0)


def load_config(path, overrides):
  """A recipe by its file's path or a packaged config's name (few_faces), with overrides."""
  spec = importlib.util.spec_from_file_location("_bench_recipe", cli.config_file(path) or path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field, value in overrides.items():
    config[field] = value
  return config


def recipe_tag(path, config):
  """The name of a recipe's runs: its file's name and a hash of the fields where it differs from
  facekp's default config, so a field added to facekp at its default keeps the cached runs."""
  changed = cli.config_differences(cli.config_as_dict(config),
                                   cli.config_as_dict(default_config.get_config()))
  digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
  return f"{posixpath.splitext(posixpath.basename(path))[0]}-{digest}"


def fold_tag(names, train, validation, test):
  """A name for one fold's split of the faces: the same split, the same name, in any run."""
  text = "\n".join(",".join(sorted(names[part])) for part in (train, validation, test))
  return f"n{len(names)}_{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def write_fold_dataset(faces, train, validation, test, out_dir, recrops=None):
  """The fold as a facekp dataset (train / validation / test splits) through shards.write_dataset,
  its images linked from the sources' datasets; `recrops`: Faces whose rows join the train
  split."""
  if os.path.exists(f"{out_dir}/dataset_info.json"):
    return out_dir
  links = f"{out_dir}/images"
  roots = {**faces.roots, **(recrops.roots if recrops else {})}
  for source, root in roots.items():
    os.makedirs(links, exist_ok=True)
    if not os.path.lexists(f"{links}/{source}"):
      os.symlink(os.path.abspath(root), f"{links}/{source}")
  splits = {"train": [faces.rows[i] for i in train] + (recrops.rows if recrops else []),
            "validation": [faces.rows[i] for i in validation],
            "test": [faces.rows[i] for i in test]}
  shards.write_dataset(out_dir, splits, links, faces.schema)
  return out_dir


def train_recipe(config, data_dir, workdir):
  """facekp.train.loop on the fold; returns the trained inference model (a finished run is
  reused)."""
  config = config.copy_and_resolve_references()
  config.data_dir = data_dir
  config.evaluate_at_end = False
  if not os.path.exists(f"{workdir}/model.keras"):
    start = time.time()
    train_lib.train_and_evaluate(config, workdir)
    logging.info("trained %s in %.0f s", workdir, time.time() - start)
  return keypoint_model.load_model(workdir)


# --- Scores --------------------------------------------------------------------------------------


def score(pred, true, schema, size):
  m = metrics_lib.keypoint_metrics(pred, true, size, schema.names, schema.eye_slots)
  return {k: m[k] for k in ("mae_px", "nme", "failure_rate_0.10", "auc_0.10")}


def fold_scores(predictions, faces, perturbed_keypoints, floor, test):
  """{predictor: figures} on one test fold. predictions: {name: (aligned [N,K,2] normalised
  over all faces or the test fold, perturbed likewise)}; floor: (direct, back, kept) pairs of
  both protocols."""
  size, schema = faces.images.shape[1], faces.schema
  out = {}
  floor_aligned, floor_perturbed = floor
  for name, (aligned, perturbed) in predictions.items():
    out[name] = score(aligned, faces.keypoints[test], schema, size)
    out[name]["perturbed_nme"] = score(perturbed, perturbed_keypoints[test], schema, size)["nme"]
  out["teacher floor"] = _floor_scores(floor_aligned, test, schema, size)
  perturbed_floor = _floor_scores(floor_perturbed, test, schema, size)
  if out["teacher floor"] and perturbed_floor:
    out["teacher floor"]["perturbed_nme"] = perturbed_floor["nme"]
  for name, figures in out.items():
    if figures is not None:
      figures["gap_closed"] = metrics_lib.gap_closed(figures, out["mean shape"],
                                                  out["teacher floor"], "nme")
  return out


def ensemble(predictions, labels):
  """{"ensemble of N recipes" (and its "+ flip TTA"): (aligned, perturbed)}: the mean of the
  `labels`' predictions, each protocol on its own."""
  out = {}
  for suffix in ("", " + flip TTA"):
    out[f"ensemble of {len(labels)} recipes{suffix}"] = tuple(
        np.mean([predictions[label + suffix][protocol] for label in labels], axis=0)
        for protocol in (0, 1))
  return out


def _floor_scores(pairs, test, schema, size):
  direct, back, kept = pairs
  chosen = np.isin(kept, test)
  if not chosen.any():
    return None
  return score(back[chosen] / size, direct[chosen] / size, schema, size)


def summarise(per_fold):
  """{predictor: {figure: (mean, std, folds)}} over the folds where the figure exists."""
  summary = {}
  for name in dict.fromkeys(n for fold in per_fold for n in fold):
    summary[name] = {}
    for key in dict.fromkeys(key for key, *_ in FIGURES + PHOTO_FIGURES):
      values = [fold[name][key] for fold in per_fold
                if fold.get(name) and fold[name].get(key) is not None]
      if values:
        summary[name][key] = (float(np.mean(values)),
                              float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                              len(values))
  return summary


def format_table(summary):
  """The aligned-crop table, then the photo protocol's rows under their own header."""
  photo_rows = {n: f for n, f in summary.items() if n.startswith(PHOTO_ROW)}
  table = _table({n: f for n, f in summary.items() if n not in photo_rows}, FIGURES)
  if photo_rows:
    table += ("\n\nwhole photos, against the teacher on each face (facekp.eval.photos):\n"
              + _table(photo_rows, PHOTO_FIGURES))
  return table


def _table(summary, columns):
  width = max(len(n) for n in summary) + 2
  header = f"{'predictor':<{width}}" + "".join(f"{label:>20}" for _, label, *_ in columns)
  lines = [header]
  for name, figures in summary.items():
    cells = []
    for key, _, factor, fmt in columns:
      if key in figures:
        mean, std, _ = figures[key]
        cells.append(f"{fmt.format(factor * mean)} ± {fmt.format(factor * std)}")
      else:
        cells.append("-")
    lines.append(f"{name:<{width}}" + "".join(f"{c:>20}" for c in cells))
  return "\n".join(lines)


# --- Whole photos --------------------------------------------------------------------------------


def face_photos(faces, sources, raw_dir):
  """The photo each face came from, [N] paths (None where unknown or absent): a face of a source
  read through --align names its photo in its keypoint row; a crop of an aligned source names it
  in its folder's index.csv, relative to raw_dir (../shared/data/raw for aligned128)."""
  by_source = {name: (images_dir, align) for name, images_dir, align in sources}
  indexes, paths = {}, []
  for name, row in zip(faces.names, faces.rows):
    source, image_name = name.split("/", 1)
    images_dir, align = by_source[source]
    if align:
      photo = f"{images_dir}/{row.photo}" if row.photo else None
    else:
      if source not in indexes:
        indexes[source] = crop_index(images_dir)
      photo = indexes[source].get(image_name)
      photo = f"{raw_dir}/{photo}" if photo else None
    paths.append(photo if photo and os.path.isfile(photo) else None)
  return paths


def crop_index(images_dir):
  """{crop name: its photo's name} of a folder's index.csv ({} without one)."""
  if not os.path.exists(f"{images_dir}/{INDEX_FILE}"):
    return {}
  with open(f"{images_dir}/{INDEX_FILE}", newline="") as f:
    return {row["crop"]: row["photo"] for row in csv.DictReader(f)}


PhotoFace = collections.namedtuple("PhotoFace", "box points")


class DlibPhotos:
  """dlib as the photo protocol's predictor (facekp.eval.photos): its HOG face detector on the
  whole photo (upsampled once, as on the crops), the 68-point shape predictor on each face, the
  five slots (DLIB_SLOTS, +0.5 px) moved by `offset` (learned_offset, in dlib's eye frame) when
  given; faces largest first (by their box)."""

  def __init__(self, offset=None):
    import dlib  # pylint: disable=import-outside-toplevel
    self.detector = dlib.get_frontal_face_detector()
    self.shape_predictor = dlib.shape_predictor(DLIB_MODEL)
    self.offset = offset

  def predict(self, image, max_faces=1):
    image = np.ascontiguousarray(image)
    boxes = sorted(self.detector(image, 1), key=lambda r: r.area(), reverse=True)[:max_faces]
    faces = []
    for box in boxes:
      shape = self.shape_predictor(image, box)
      xy = np.array([[p.x + 0.5, p.y + 0.5] for p in shape.parts()], np.float64)
      points, eyes = xy[list(DLIB_SLOTS)][None], xy[list(DLIB_EYES)][None]
      if self.offset is not None:
        points = from_face_frame(to_face_frame(points, eyes) + self.offset, eyes)
      faces.append(PhotoFace((box.left(), box.top(), box.right() + 1, box.bottom() + 1),
                             points[0]))
    return faces


def photo_fold_scores(paths, workdirs, dlib_offset, schema, aligned):
  """{"photos: <predictor>": figures} of the photo protocol on one fold's test photos: each
  trained recipe through facekp.load (workdirs: {label: workdir}) and, given the fold's learned
  offset, dlib. Each also gets its NME on the faces every one of them found (common_nme) and its
  photo NME over its aligned-crop NME on the fold (nme_ratio; aligned: fold_scores' figures)."""
  if not paths or not (workdirs or dlib_offset is not None):
    return {}
  with contextlib.ExitStack() as stack:
    predictors = {label: stack.enter_context(facekp.load(workdir))
                  for label, workdir in workdirs.items()}
    if dlib_offset is not None:
      predictors[DLIB_OFFSET] = DlibPhotos(dlib_offset)
    result = photos_lib.photo_faces(paths, predictors, schema.mesh_indices)
  everyone = np.logical_and.reduce([photos_lib.found_faces(result, n) for n in predictors])
  out = {}
  for name in predictors:
    figures = photos_lib.photo_metrics(result, name, schema.eye_slots)
    figures["common_nme"] = photos_lib.photo_metrics(result, name, schema.eye_slots,
                                                     everyone).get("nme")
    if figures.get("nme") is not None and (aligned.get(name) or {}).get("nme"):
      figures["nme_ratio"] = figures["nme"] / aligned[name]["nme"]
    figures["photos"] = len(paths) - result.skipped
    out[PHOTO_ROW + name] = figures
  return out


# --- The run -------------------------------------------------------------------------------------


def run(faces, num_folds, recipes, cache, quick=False, only_folds=0, photos=None, recrops=None):
  """Every predictor on every fold; returns (per-fold figures, summary, notes). photos: [N] the
  photo of each face (face_photos) for the photo protocol, None to skip it. recrops: Faces of
  re-crops (load_recrops); the recipes also train on those of the train part's groups, the
  other predictors learn from the faces alone, as in a run without them."""
  schema, size = faces.schema, faces.images.shape[1]
  folds = assign_folds(faces.groups, num_folds)
  notes = {"folds_run": only_folds or num_folds, "faces": int(len(faces.names)),
           "photo_groups": int(len(set(faces.groups.tolist()))),
           "folds": num_folds, "faces_per_fold": np.bincount(folds).tolist(),
           "data": faces.description}
  perturbed_images, perturbed_keypoints = yardsticks.perturb(
      faces.images, faces.keypoints, schema.flip_permutation)
  floor = (yardsticks.teacher_pairs(faces.images, faces.keypoints, schema),
           yardsticks.teacher_pairs(perturbed_images, perturbed_keypoints, schema))
  hog, hog_perturbed = hog_features(faces.images), hog_features(perturbed_images)
  dlib_problem = dlib_available()
  if dlib_problem:
    notes["dlib"] = dlib_problem
  else:
    dlib_aligned, dlib_perturbed = dlib_points(faces.images), dlib_points(perturbed_images)
    notes["dlib_face_found"] = [dlib_aligned[2], dlib_perturbed[2]]
  configs = [(path, load_config(path, _quick_overrides() if quick else {})) for path in recipes]
  per_fold = []
  for fold in range(only_folds or num_folds):
    train, validation, test = split_fold(faces.groups, folds, fold)
    both = np.concatenate([train, validation])
    mean = faces.keypoints[both].mean(0)
    predictions = {"mean shape": (np.broadcast_to(mean, faces.keypoints[test].shape),) * 2}
    hog_predict, alpha = hog_ridge(hog, faces.keypoints, train, validation)
    predictions["HOG + ridge"] = (hog_predict(hog[test]), hog_predict(hog_perturbed[test]))
    notes.setdefault("ridge_alpha", []).append(alpha)
    offset, workdirs = None, {}  # the photo protocol's: dlib's learned offset, the recipes' runs
    if not dlib_problem:
      labels_px = faces.keypoints * size
      offset = learned_offset(dlib_aligned[0], dlib_aligned[1], labels_px, both)
      for label, shift in (("dlib 68", None), ("dlib 68 + learned offset", offset)):
        predictions[label] = tuple(_dlib_prediction(d, test, shift, size)
                                   for d in (dlib_aligned, dlib_perturbed))
    if configs:
      split_tag = fold_tag(faces.names, train, validation, test)
      extra = None
      if recrops is not None:
        extra = recrops.subset(np.flatnonzero(np.isin(recrops.groups, faces.groups[train])))
        split_tag += "_" + hashlib.sha256("\n".join(extra.names).encode()).hexdigest()[:10]
        notes.setdefault("recrops_trained_on", []).append(len(extra.names))
      data_dir = write_fold_dataset(faces, train, validation, test,
                                    f"{cache}/folds/{split_tag}", extra)
      for path, config in configs:
        label = posixpath.basename(path)
        workdirs[label] = f"{cache}/runs/{recipe_tag(path, config)}/{split_tag}"
        model = train_recipe(config, data_dir, workdirs[label])
        predictions[label] = (evaluate.predict(model, faces.images[test]),
                              evaluate.predict(model, perturbed_images[test]))
        predictions[f"{label} + flip TTA"] = (
            evaluate.predict_flip_tta(model, faces.images[test], schema.flip_permutation),
            evaluate.predict_flip_tta(model, perturbed_images[test], schema.flip_permutation))
      if len(configs) > 1:
        predictions.update(ensemble(predictions, [posixpath.basename(p) for p, _ in configs]))
    per_fold.append(fold_scores(predictions, faces, perturbed_keypoints, floor, test))
    if photos is not None:
      fold_photos = sorted({photos[i] for i in test if photos[i]})
      per_fold[-1].update(photo_fold_scores(fold_photos, workdirs, offset, schema, per_fold[-1]))
      notes.setdefault("photos_per_fold", []).append(len(fold_photos))
    logging.info("fold %d of %d done (%d test faces)", fold + 1, num_folds, len(test))
  return per_fold, summarise(per_fold), notes


def _dlib_prediction(found, test, offset, size):
  points, eyes, _ = found
  points, eyes = points[test], eyes[test]
  if offset is not None:
    points = from_face_frame(to_face_frame(points, eyes) + offset, eyes)
  return keypoints_lib.to_normalised(points, size)


def _quick_overrides():
  return {"num_epochs": 1, "early_stopping_patience": 0}


FLAGS = flags.FLAGS
flags.DEFINE_integer("folds", 5, "Folds of the cross-validation (by source photo).")
flags.DEFINE_list("recipes", [], "facekp configs (packaged ones by name, others by path) to "
                  "train on every fold, e.g. few_faces,few_faces_robust,path/to/mine.py.")
flags.DEFINE_string("cache", "data/bench_accuracy", "Folder for the datasets and runs it builds "
                    "(reused by the next run).")
flags.DEFINE_string("shared", SHARED_DATA, "Folder holding aligned128/ and raw/.")
flags.DEFINE_list("sources", [], "Restrict to these sources (aligned128, raw; default all).")
flags.DEFINE_integer("only_folds", 0, "Run only the first N folds (screening); 0: all.")
flags.DEFINE_integer("recrops", 0, "make_tfrecords --recrops=K on the raw photos: K jittered "
                     "re-crops of each face, labelled by the teacher, that the recipes also train "
                     "on (their train part's); the folds and the other predictors as without.")
flags.DEFINE_bool("quick", False, "Smoke test: 2 folds, the first faces only, 1 epoch.")
flags.DEFINE_string("json", None, "Write every figure (per fold and summary) to this file.")
flags.DEFINE_bool("photos", True, "Also score the photo protocol: the test fold's raw photos "
                  "end to end (facekp.load(...).predict, and dlib) against the teacher on each "
                  "face (facekp.eval.photos).")


def main(argv):
  sources, description = default_sources(FLAGS.shared, FLAGS.sources)
  if FLAGS.sources and sources[0][0] == "sample":
    raise app.UsageError(f"--sources={','.join(FLAGS.sources)} names none of the data found "
                         f"in {FLAGS.shared} (aligned128, raw)")
  start = time.time()
  faces = load_faces(sources, FLAGS.cache, description)
  num_folds = FLAGS.folds
  if FLAGS.quick:
    num_folds = 2
    keep = np.flatnonzero(np.isin(faces.groups, np.unique(faces.groups)[:QUICK_FACES]))
    faces = faces.subset(keep[:QUICK_FACES * 2])
    faces.description += f"; --quick: {len(faces.names)} faces"
  if len(set(faces.groups.tolist())) < num_folds:
    raise app.UsageError(f"{len(set(faces.groups.tolist()))} photo groups cannot fill "
                         f"{num_folds} folds: lower --folds")
  photos = face_photos(faces, sources, f"{FLAGS.shared}/raw") if FLAGS.photos else None
  recrops = None
  if FLAGS.recrops:
    recrops = load_recrops(sources, faces, FLAGS.cache, FLAGS.recrops)
    faces.description += f"; {recrops.description}, trained on by the recipes"
  per_fold, summary, notes = run(faces, num_folds, FLAGS.recipes, FLAGS.cache, FLAGS.quick,
                                 FLAGS.only_folds, photos, recrops)
  notes["seconds"] = round(time.time() - start, 1)
  print(f"data: {notes['data']}")
  print(f"{notes['faces']} faces from {notes['photo_groups']} photo groups, {num_folds} folds "
        f"by photo ({notes['faces_per_fold']} test faces), {notes['folds_run']} run; "
        "mean ± std over folds")
  print(format_table(summary))
  if "dlib" in notes:
    print(f"dlib left out: {notes['dlib']}")
  if "photos_per_fold" in notes:
    print(f"whole photos: {notes['photos_per_fold']} test photos per fold"
          + ("" if FLAGS.recipes or "dlib" not in notes else "; no --recipes and no dlib: "
             "no photo predictor to score"))
  if FLAGS.json:
    files.write_json(FLAGS.json, {"notes": notes, "summary": summary, "per_fold": per_fold})


if __name__ == "__main__":
  app.run(main)
