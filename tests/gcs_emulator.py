"""A GCS emulator on loopback for the tests: gcp-storage-emulator, in memory, plus the object
generation header that TensorStore's gcs driver reads on every download.

  python tests/gcs_emulator.py PORT BUCKET

gcp-storage-emulator answers a media download without `x-goog-generation`; TensorStore (Orbax's
array writer) then fails with "Malformed StorageGeneration". Real GCS always sends it.
"""

import sys

from gcp_storage_emulator.handlers import objects


def with_generation_headers(download):
  def download_with_generation(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except Exception:  # pylint: disable=broad-except
      obj = None  # download() answers 404 itself
    if obj is not None:
      response['x-goog-generation'] = obj['generation']
      response['x-goog-metageneration'] = obj['metageneration']
    return download(request, response, storage, *args, **kwargs)
  return download_with_generation


def main():
  port, bucket = sys.argv[1], sys.argv[2]
  objects.download = with_generation_headers(objects.download)
  from gcp_storage_emulator.__main__ import main as emulator_main  # routes bind download now
  emulator_main(['start', '--host=127.0.0.1', f'--port={port}', '--in-memory',
                 f'--default-bucket={bucket}'])


if __name__ == '__main__':
  main()
