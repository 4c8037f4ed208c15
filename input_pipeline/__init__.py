"""Everything that imports TensorFlow: record preparation, tf.data readers, the synthetic dataset."""
