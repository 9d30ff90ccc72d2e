"""The Waymo Open Dataset v1 format without TensorFlow.

``tfrecord`` frames records (length, masked CRC32C); ``range_image`` holds the
official range-image conventions (rows, azimuths, pixel poses) in numpy;
``matrix_codec`` the codecs of the zlib-compressed ``MatrixFloat`` / ``MatrixInt32``
fields; ``frame`` decodes a parsed ``dataset_pb2.Frame`` back into points; ``reader``
reads segments into ``RawFrame``s.
"""
