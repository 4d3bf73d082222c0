// The Python module locallearn._C. Importing it registers the ops of the
// `locallearn` namespace with the PyTorch dispatcher (static initialisers of
// STABLE_TORCH_LIBRARY_FRAGMENT / _IMPL in csrc/ops and csrc/cuda) and
// exposes how the library was built, and in CUDA builds the tensor-core switch of
// the locally-connected kernels (csrc/cuda/tensor_cores.h).
#include <Python.h>

#ifndef LOCALLEARN_WITH_CUDA
#define LOCALLEARN_WITH_CUDA 0
#endif
#ifndef LOCALLEARN_CUDA_ARCH_LIST
#define LOCALLEARN_CUDA_ARCH_LIST ""
#endif
#ifndef LOCALLEARN_CUDA_VERSION  // the CUDA version of the torch it was built against
#define LOCALLEARN_CUDA_VERSION ""
#endif

#if LOCALLEARN_WITH_CUDA
#include "cuda/tensor_cores.h"

namespace {

PyObject* set_tensor_cores_enabled(PyObject*, PyObject* enabled) {
  const int truth = PyObject_IsTrue(enabled);
  if (truth < 0) return nullptr;
  locallearn::set_tensor_cores_enabled(truth == 1);
  Py_RETURN_NONE;
}

PyObject* tensor_cores_enabled(PyObject*, PyObject*) { return PyBool_FromLong(locallearn::tensor_cores_enabled()); }

PyMethodDef methods[] = {
    {"set_tensor_cores_enabled", set_tensor_cores_enabled, METH_O,
     "Let the locally-connected CUDA kernels use tensor cores (True, the default) or run SIMT only (False)."},
    {"tensor_cores_enabled", tensor_cores_enabled, METH_NOARGS,
     "Whether the locally-connected CUDA kernels may use tensor cores."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace
#define LOCALLEARN_METHODS methods
#else
#define LOCALLEARN_METHODS nullptr
#endif

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "locallearn native ops", -1, LOCALLEARN_METHODS};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddObject(module, "with_cuda", PyBool_FromLong(LOCALLEARN_WITH_CUDA)) < 0 ||
      PyModule_AddStringConstant(module, "cuda_arch_list", LOCALLEARN_CUDA_ARCH_LIST) < 0 ||
      PyModule_AddStringConstant(module, "cuda_version", LOCALLEARN_CUDA_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
