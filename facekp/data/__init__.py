"""Dataset creation: a folder of face photos -> labelled TFRecord shards with TFDS metadata.

In: image files (aligned crops, or raw photos with `align`). Out: face_keypoints.csv, cleaned.csv,
the cleaning and duplicate reports, schema.json and the shards (facekp.core.dataset_info describes
the folder). Faces are found and cropped (faces, align), labelled by the teacher (face_mesh) in
worker processes with a journal (annotate), cleaned (cleaning, dedup), split by photo (splits)
and written (shards), locally or on Apache Beam (beam_runner); make_tfrecords drives it all.
"""
