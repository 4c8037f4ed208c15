r"""TFDS builder of ``vclr_videos``: the examples of ``python -m input_pipeline.prepare`` in TFDS.

  python -m input_pipeline.vclr_videos --config=ucf101_split1 --manual_dir=/data/manual \
      --data_dir=/data/tfds

(__main__.py: ``tfds build`` with this builder, which TFDS's own command line cannot run
without apache-beam) reads the dataset's files from the manual folder (MANUAL_DOWNLOAD_INSTRUCTIONS
below) and writes ``/data/tfds/vclr_videos/ucf101_split1/1.0.0``, which every reader takes as
its records folder (records.tfds_index), named by ``--config.data.source=tfds
--config.data.tfds_name=vclr_videos/ucf101_split1 --config.data.tfds_data_dir=/data/tfds``
(records.tfds_version_dir) or given as ``--config.data.records_dir``. Videos are listed by
input_pipeline/sources.py and decoded by ``prepare.encode_videos``, the function preparation
uses, with the options of docs/data.md's prepare command for the dataset (the config's
``options``): a video gives the same frames, label and fields either way, and the same videos
are skipped. Beside every tfrecord file the builder writes its frame index, as preparation does
beside every shard (input_pipeline/frame_index.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import writer as writer_lib

from input_pipeline import frame_index
from input_pipeline import prepare
from input_pipeline import records
from input_pipeline import sources
from input_pipeline import video_decoding

# The preparation recipes (docs/data.md, section 1): the reference's K400 (30 fps, 340x256, padded
# or trimmed to 300 frames), UCF101 and HMDB51 at 340x256, any folder at a short side of 256.
_JPEG_QUALITY = 90
_K400 = prepare.EncodingOptions(
    fps=30.0, geometry=video_decoding.FrameGeometry(fixed_size=(340, 256)),
    jpeg_quality=_JPEG_QUALITY, min_frames=prepare.DEFAULT_MIN_FRAMES, frames_fps=30.0,
    frames_per_video=300)
_340X256 = prepare.EncodingOptions(
    fps=None, geometry=video_decoding.FrameGeometry(fixed_size=(340, 256)),
    jpeg_quality=_JPEG_QUALITY, min_frames=prepare.DEFAULT_MIN_FRAMES, frames_fps=30.0)
_SHORT_SIDE_256 = dataclasses.replace(
    _340X256, geometry=video_decoding.FrameGeometry(short_side=256))


@dataclasses.dataclass(eq=False)
class VclrVideosConfig(tfds.core.BuilderConfig):
  """One dataset layout in manual_dir and how its videos are encoded.

  source: the sources.list_source kind. paths: list_source's path arguments, relative to
  manual_dir; ``{split}`` is replaced by the split's name. manual_layout: what manual_dir must
  hold (the config's part of MANUAL_DOWNLOAD_INSTRUCTIONS).
  """
  source: str = ''
  splits: tuple[str, ...] = ()
  paths: dict[str, str] = dataclasses.field(default_factory=dict)
  split_number: int = 1
  options: prepare.EncodingOptions = _340X256
  manual_layout: str = ''


_CONFIGS = (
    VclrVideosConfig(
        name='kinetics400', source='kinetics', splits=('train', 'val'),
        paths={'csv_path': 'kinetics400/{split}.csv', 'videos_dir': 'kinetics400/{split}'},
        options=_K400,
        description='Kinetics-400 train and val as the reference prepares it: 30 fps, 340x256, '
        'every video padded or trimmed to 300 frames (configs/k400_reference.py).',
        manual_layout='kinetics400/train.csv and kinetics400/val.csv (the annotation CSVs: '
        'label,youtube_id,time_start,time_end,split) and the folders kinetics400/train/ and '
        'kinetics400/val/ of videos named <youtube_id>_<start:06d>_<end:06d>.<mp4, webm, ...> '
        '(flat or in class folders).'),
    VclrVideosConfig(
        name='ucf101_split1', source='ucf101', splits=('train', 'test'),
        paths={'root': 'UCF-101', 'splits_dir': 'ucfTrainTestlist'},
        description='UCF101, train and test lists of split 1, at 340x256.',
        manual_layout='UCF-101/<Class>/<video>.avi (UCF101.rar extracted) and ucfTrainTestlist/ '
        '(classInd.txt, trainlist01.txt, testlist01.txt).'),
    VclrVideosConfig(
        name='hmdb51_split1', source='hmdb51', splits=('train', 'test'),
        paths={'root': 'hmdb51', 'splits_dir': 'testTrainMulti_7030_splits'},
        description='HMDB51, train and test videos of split 1, at 340x256.',
        manual_layout='hmdb51/<class>/<video>.avi (every class archive extracted) and '
        'testTrainMulti_7030_splits/ (the <class>_test_split1.txt files).'),
    VclrVideosConfig(
        name='folder', source='folder', splits=('train',), paths={'root': 'videos'},
        options=_SHORT_SIDE_256,
        description='Any folder of unlabelled videos (label -1), one train split, short side '
        '256.',
        manual_layout='videos/: any videos (.mp4, .webm, .avi, .mkv, .mov, .m4v, .mpg, .mpeg), '
        'in subfolders or not.'),
)


class FrameIndexingWriter(writer_lib.ExampleWriter):
  """TFDS's tfrecord writer, which also writes every file's frame index beside it (from the
  very bytes written, as preparation does): the training reader reads only the six frames it
  samples from each video."""

  def write(self, path, examples):
    if self.file_format != file_adapters.FileFormat.TFRECORD:
      raise ValueError(f'file_format={self.file_format.value}: the readers read tfrecord '
                       'files; build with the default file format.')
    frames = frame_index.ShardIndexBuilder()

    def indexed():
      for key, serialized in examples:
        video = records.parse_video(serialized, records.TFDS_EXAMPLE)
        frames.add(serialized, list(video['frames'].numpy()))
        yield key, serialized

    positions = super().write(path, indexed())
    frames.save(frame_index.index_path(os.fspath(path)))
    return positions


class Builder(tfds.core.GeneratorBasedBuilder):
  """Videos as JPEG frames with their label and source fields, as prepared records hold them."""

  # Bump it when preparation's decoding or a config's options change what a video gives.
  VERSION = tfds.core.Version(records.TFDS_VERSION)
  RELEASE_NOTES = {
      '1.0.0': 'First release: the examples of python -m input_pipeline.prepare (configs '
               'kinetics400, ucf101_split1, hmdb51_split1, folder), a frame index beside every '
               'file.',
  }
  BUILDER_CONFIGS = list(_CONFIGS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put into manual_dir (--manual_dir) the files of the config you build, under these '
      'names (one manual_dir may hold them all side by side):\n' +
      '\n'.join(f'  {config.name}: {config.manual_layout}' for config in _CONFIGS))

  def __init__(self, *, workers: int | None = None, **kwargs):
    """workers: processes that decode the videos (default: all cores; 1: this process)."""
    super().__init__(**kwargs)
    self._workers = workers or os.cpu_count() or 1

  def _info(self) -> tfds.core.DatasetInfo:
    names = records.TFDS_FEATURES
    return self.dataset_info_from_configs(
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            # The frames exactly as preparation encodes them (records.IMAGE_KEY).
            names[records.IMAGE_KEY]: tfds.features.Video(
                shape=(None, None, None, 3), encoding_format='jpeg'),
            # Class names come from manual_dir's lists; -1 marks an unlabelled video.
            names[records.LABEL_INDEX_KEY]: tfds.features.ClassLabel(),
            names[records.LABEL_STRING_KEY]: tfds.features.Text(),
            # The video's path relative to its source folder.
            names[records.FILENAME_KEY]: tfds.features.Text(),
            # Its position in the split's listing (unique; gaps where videos were skipped).
            names[records.VIDEO_INDEX_KEY]: tfds.features.Scalar(np.int64),
            names[records.FPS_KEY]: tfds.features.Scalar(np.float32),
            names[records.HEIGHT_KEY]: tfds.features.Scalar(np.int64),
            names[records.WIDTH_KEY]: tfds.features.Scalar(np.int64),
        }))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    listings = {}
    for split in config.splits:
      paths = {key: os.path.join(manual_dir, path.format(split=split))
               for key, path in config.paths.items()}
      try:
        listings[split] = sources.list_source(config.source, split=split,
                                              split_number=config.split_number, **paths)
      except sources.SourceError as error:
        raise sources.SourceError(
            f'{error}\nFor --config={config.name}, manual_dir ({manual_dir}) must hold '
            f'{config.manual_layout}') from None
    class_names = listings[config.splits[0]].class_names
    if any(listing.class_names != class_names for listing in listings.values()):
      raise sources.SourceError(
          f'The splits of --config={config.name} in {manual_dir} list different classes: give '
          'every split a list that holds all classes, so that labels mean the same in each.')
    self.info.features[records.TFDS_FEATURES[records.LABEL_INDEX_KEY]].names = class_names
    return {split: self._generate_examples(split, listing)
            for split, listing in listings.items()}

  def _generate_examples(self, split: str, listing: sources.Listing):
    skipped = 0
    pool = prepare.worker_pool(self._workers)
    try:
      for entry, fields, skip_reason in prepare.encode_videos(
          enumerate(listing.entries), self.builder_config.options, pool):
        if fields is None:
          logging.warning('%s: skipping %s: %s', split, entry.name, skip_reason)
          skipped += 1
          continue
        yield entry.name, fields  # TFDS's feature names are the fields' (records.TFDS_FEATURES)
    finally:
      if pool is not None:
        pool.terminate()
        pool.join()
    logging.info('%s: %d of %d videos skipped.', split, skipped, len(listing.entries))

  def _example_writer(self) -> writer_lib.ExampleWriter:
    return FrameIndexingWriter(file_format=self.info.file_format)
