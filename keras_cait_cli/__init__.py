"""The `keras-cait` command line (`keras_cait_cli.main.main`). It lives
outside the `keras_cait` package, whose import loads Keras and a backend, so
that it starts at once."""
