"""SUNDIALS CVODES engine: bindings, code generation, PyTensor Op."""
