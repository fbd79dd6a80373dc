"""The ``retrain`` command groups, one module each; ``retrain.cli`` registers them.

A command parses its options and calls one composition entry (a service's ``main``, the
runner, the stack, the demo): nothing more.
"""
