"""TensorFlow reference implementations the tests compare against."""
