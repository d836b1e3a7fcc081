"""Several image folders pooled into one dataset: make_tfrecords --images=A,B --align=0,128.

A dataset is made from one folder, exactly as it always was, or from several, each a source:
  name     each source is named after its folder ("aligned128", "raw"); folders of one name are
           told apart by the folders above them ("a_raw", "b_raw"). Its images are named
           "<source>/<name in its folder>" in the CSVs and the shards, its crops
           "<source>/<stem>_f<k>.png" (one folder: the names in it, as before);
  align    each source has its own --align: 0 for images stored as face crops (FFHQ-128), S to
           crop every face of raw photos FFHQ-style to S px;
  images   OUT/aligned/<source>/ holds the crops of a source with --align; for a source of stored
           crops it is a link to the source's folder. Every image name of a pooled dataset is so a
           path under OUT/aligned (`--images=OUT/aligned --csv=OUT/cleaned.csv` rebuilds from it);
  journal  each source has its own annotation journal, OUT/journals/<source>.journal: a rerun
           reuses every label of the sources it names again, a source added is labelled, a source
           left out keeps its journal and crops for a later run, and a source labelled before
           with other settings (--align, --max_faces, --landmarks) is refused, saying what to
           delete; OUT/sources.json records each source's name, folder and --align.
Cleaning, finding copies and splitting run over the pooled rows, so copies found in two sources
share a split as copies within one do. A folder of one dataset and several folders of another
never share an OUT: each refuses the other's.
"""
import collections
import os
import posixpath
import typing

from absl import logging

from facekp.core import files
from facekp.core import journal as journal_lib
from facekp.core import keypoints
from facekp.data import annotate

SOURCES_FILE = "sources.json"


class Source(typing.NamedTuple):
  """One folder of a dataset: its name ("" when it is the only one), folder and --align."""
  name: str
  folder: str
  align: int


def split_folders(text):
  """--images as given: the folders it names, separated by commas (a whole value that names a
  folder is that folder, commas and all)."""
  if "," not in text or os.path.isdir(text):
    return [text]
  folders = [item.strip() for item in text.split(",")]
  if not all(folders):
    raise ValueError(f"--images={text}: an empty folder name between commas (give folders "
                     "separated by single commas)")
  return folders


def parse_align(text):
  """--align as given: one int for every folder, or a list of one per folder."""
  try:
    values = [int(item) for item in text.split(",")]
  except ValueError:
    raise ValueError(f"--align={text}: must be an integer, or integers separated by commas, one "
                     "per --images folder (e.g. 0,128)") from None
  return values[0] if len(values) == 1 else values


def as_lists(images, align):
  """([folder], [align of each]) of make_tfrecords' arguments: `images` one folder (a str or
  path) or a sequence of them, `align` one value for all or a sequence of one per folder."""
  if images is None or isinstance(images, (str, os.PathLike)):
    images = [images]
  folders = [folder if folder is None else os.fspath(folder) for folder in images]
  if len(folders) > 1 and not all(folders):  # one folder: checked as any --images is
    raise ValueError(f"--images={folders}: a folder in the list is empty: give each by its path")
  aligns = list(align) if isinstance(align, (list, tuple)) else [align]
  if not folders:
    raise ValueError("--images names no folder: give one, or several separated by commas")
  if len(aligns) == 1:
    aligns *= len(folders)
  if len(aligns) != len(folders):
    raise ValueError(f"--align={','.join(map(str, aligns))}: {len(aligns)} values for "
                     f"{len(folders)} --images folder{'s' if len(folders) > 1 else ''}: give one "
                     "value for all of them, or one per folder in the order of --images")
  return folders, aligns


def _path_parts(folder):
  """The names of the folders along a path, from the top (a URL's bucket first)."""
  path = folder.split("://", 1)[1] if not files.is_local(folder) else os.path.abspath(folder)
  return [part for part in path.split("/") if part] or ["root"]


def source_names(folders):
  """A name per folder: its own name, or for folders that share it, that name joined to those of
  the folders above it ("a/raw", "b/raw": "a_raw", "b_raw") until the names differ; numbered
  ("raw_2") where even their whole paths, so joined, meet."""
  paths = [_path_parts(folder) for folder in folders]
  depth = [1] * len(paths)
  while True:
    names = ["_".join(path[-d:]) for path, d in zip(paths, depth)]
    uses = collections.Counter(names)
    shared = [i for i, name in enumerate(names) if uses[name] > 1 and depth[i] < len(paths[i])]
    if not shared:
      break
    for i in shared:
      depth[i] += 1
  seen = collections.Counter()
  for i, name in enumerate(names):
    seen[name] += 1
    if uses[name] > 1 and seen[name] > 1:
      names[i] = f"{name}_{seen[name]}"
  return names


def make_sources(images, align):
  """The Sources of make_tfrecords' `images` and `align` (as_lists): one folder is one Source
  named "" (the dataset of one folder, named as it always was); several are named by
  source_names. A folder named twice is refused."""
  folders, aligns = as_lists(images, align)
  if len(folders) == 1:
    return [Source("", folders[0], aligns[0])]
  real = [os.path.realpath(f) if files.is_local(f) else f.rstrip("/") for f in folders]
  for folder, count in collections.Counter(real).items():
    if count > 1:
      raise ValueError(f"--images names the folder {folder} {count} times: give each folder once")
  return [Source(name, folder, folder_align)
          for name, folder, folder_align in zip(source_names(folders), folders, aligns)]


def is_pooled(sources):
  return len(sources) > 1


def count_by_source(sources, rows):
  """{source name: rows of it} of a pooled dataset's rows."""
  counts = collections.Counter(row.image_name.split("/", 1)[0] for row in rows)
  return {source.name: counts[source.name] for source in sources}


def common_align(sources):
  """The --align the dataset records (facekp.core.keypoints.crop_method): the sources' one value,
  or 0 (images as stored) when they differ: the pooled images are then not all facekp's crops."""
  aligns = {source.align for source in sources}
  return aligns.pop() if len(aligns) == 1 else 0


def images_root(sources, out_dir):
  """The folder every image name of the dataset is a path under."""
  if is_pooled(sources) or sources[0].align:
    return f"{out_dir}/{annotate.ALIGNED_DIR}"
  return sources[0].folder.rstrip("/")


def settings(sources, out_dir, mesh_indices, max_faces, recrops=0):
  """The annotate.Settings of each source (re-crops for the sources with --align)."""
  return [annotate.Settings(source.folder.rstrip("/"), out_dir, tuple(mesh_indices), source.align,
                            max_faces, recrops if source.align else 0, source=source.name)
          for source in sources]


def check_out(sources, out_dir):
  """Refuses, before any work, an out_dir that holds a dataset of one folder for several, or the
  reverse (their journals and crops lie elsewhere, and a link of the pooled layout must never be
  written through), and a pooled folder of stored crops that OUT/aligned cannot link to."""
  for source in sources if is_pooled(sources) else ():
    if not source.align and not files.is_local(source.folder):
      raise ValueError(f"--images={source.folder}: a pooled folder of stored crops (--align=0) "
                       f"must be on this machine ({out_dir}/{annotate.ALIGNED_DIR}/{source.name} "
                       "links to it)")
  if is_pooled(sources) and os.path.exists(f"{out_dir}/{annotate.JOURNAL}"):
    raise ValueError(f"--out={out_dir} holds a dataset of one --images folder "
                     f"({annotate.JOURNAL}): give another --out to pool several folders")
  if not is_pooled(sources) and os.path.isdir(f"{out_dir}/{annotate.JOURNALS_DIR}"):
    raise ValueError(f"--out={out_dir} holds a dataset pooled from several --images folders "
                     f"({annotate.JOURNALS_DIR}/): give those folders again, or another --out")


def prepare(sources, out_dir, all_settings):
  """Before annotating a pooled dataset: refuses a source labelled before with other settings
  (before any work, naming what to delete), makes OUT/aligned/<source> a folder for each source
  with --align and a link to the folder for each without, and writes OUT/sources.json."""
  for source, source_settings in zip(sources, all_settings):
    path = source_settings.journal_path
    recorded = journal_lib.recorded_fingerprint(path)
    if recorded is not None and recorded != source_settings.fingerprint():
      raise ValueError(
          f"--images={source.folder}: source {source.name!r} was labelled in {out_dir} with "
          f"other settings ({recorded} instead of {source_settings.fingerprint()}): give another "
          f"--out, or delete {path} and {out_dir}/{annotate.ALIGNED_DIR}/{source.name} to label "
          "it again")
  journals = f"{out_dir}/{annotate.JOURNALS_DIR}"
  named = {posixpath.basename(source_settings.journal_path) for source_settings in all_settings}
  for name in sorted(set(os.listdir(journals) if os.path.isdir(journals) else ()) - named):
    logging.info("%s/%s: a source of an earlier run that --images leaves out; its labels stay "
                 "for a later run (delete it, and its folder in %s/%s, to free the space)",
                 journals, name, out_dir, annotate.ALIGNED_DIR)
  for source in sources:
    _place_images(source, f"{out_dir}/{annotate.ALIGNED_DIR}/{source.name}")
  files.write_json(f"{out_dir}/{SOURCES_FILE}", {"sources": [
      {"name": source.name, "align": source.align,
       "folder": os.path.abspath(source.folder) if files.is_local(source.folder) else source.folder,
       "crop": keypoints.crop_method(source.align)} for source in sources]})


def _place_images(source, path):
  """OUT/aligned/<source>: a folder for the crops of a source with --align (never a link, which
  crops would be written through), else a link to the source's folder."""
  os.makedirs(posixpath.dirname(path), exist_ok=True)
  if source.align:
    if os.path.islink(path):
      os.unlink(path)  # the link of an earlier run without --align: only the link goes
    os.makedirs(path, exist_ok=True)
    return
  target = os.path.abspath(source.folder)
  if os.path.islink(path):
    if os.readlink(path) == target:
      return
    os.unlink(path)  # the folder moved: link it again
  elif os.path.lexists(path):
    raise ValueError(f"{path} holds the crops of an earlier run of source {source.name!r} with "
                     f"--align, but --align=0 now reads {source.folder} as it is: delete {path} "
                     "(its labels are gone with its journal), or give another --out")
  os.symlink(target, path)
