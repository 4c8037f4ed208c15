"""The fields of config.data that the training and evaluation configs share: where the videos
are (add_source_fields) and the training reader's and augmentation's knobs (add_reader_fields)."""

import ml_collections

from input_pipeline import damage
from vclr_jax import augment


def add_source_fields(data: ml_collections.ConfigDict, records_dir: str) -> None:
  """Adds where the readers find the videos (input_pipeline.records.source_dir) to ``data``.

  source: 'records' reads records_dir: records prepared by python -m input_pipeline.prepare,
    or the version folder of a built TFDS dataset. 'tfds' reads the dataset built by python -m
    input_pipeline.vclr_videos named tfds_name in tfds_data_dir (docs/data.md, TFDS), so a command
    line names a TFDS dataset the way TFDS does instead of spelling out its folder.
  tfds_name: 'vclr_videos/<config>[:<version>]', e.g. 'vclr_videos/ucf101_split1'; without a
    version, the builder's current one (as tfds.load).
  tfds_data_dir: the builder's --data_dir; '' is TFDS's own default ($TFDS_DATA_DIR, else
    ~/tensorflow_datasets), where tfds.load looks too.
  """
  data.source = 'records'
  data.records_dir = records_dir
  data.tfds_name = ''
  data.tfds_data_dir = ''


def add_reader_fields(data: ml_collections.ConfigDict, frame_size=(256, 340)) -> None:
  """Adds the host reader's knobs and the device augmentation's parameters to ``data``.

  frame_size: (height, width) of the uint8 canvas the host decodes onto; the K400, UCF101
    and HMDB51 recipes prepare frames at 340x256, which costs nothing extra.
  cycle_length, shuffle_buffer: shards interleaved and records shuffled (they fix the order
    of the stream: a resumed run keeps them). num_parallel_calls: decoding threads (0: tf.data
    AUTOTUNE). prefetch: batches prepared ahead on the host and on the devices.
  max_skipped_fraction: damaged records are skipped, counted and named; more distinct damaged
    videos on a host than this fraction of the split's videos stops the run with the list of
    damaged shards (input_pipeline/damage.py).
  augment: the MoCo v2 recipe applied on the device (vclr_jax/augment.py).
  """
  data.frame_size = tuple(frame_size)
  data.cycle_length = 16
  data.shuffle_buffer = 256
  data.num_parallel_calls = 0
  data.prefetch = 2
  data.max_skipped_fraction = damage.DEFAULT_MAX_SKIPPED_FRACTION
  data.augment = ml_collections.ConfigDict(augment.default_augment_config_dict())
