"""The part of keras-cait that imports no deep-learning framework: errors,
the configuration schema, file and image I/O, the shipped presets' JSON,
collection runs and their records, the artefact cache and the ONNX
Runtime and OpenVINO engines. `keras_cait` builds on it; a command-line
run from a cached engine artefact uses it alone, so that it never loads
Keras, KerasHub or a backend.
"""
