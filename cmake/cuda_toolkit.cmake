# Finds the CUDA toolkit for a torch that has CUDA, and hands it to torch's CMake
# package, so that a compiler-only toolkit (nvcc, its headers and the CUDA runtime)
# is enough: NVRTC, cuBLAS and the other CUDA libraries torch links come with the
# torch wheel, and locallearn links none of them.
#
# The compiler: CUDACXX or -DCMAKE_CUDA_COMPILER as CMake reads them, else
# $CUDA_HOME/bin/nvcc or $CUDA_PATH/bin/nvcc, else the first nvcc on PATH, else
# /usr/local/cuda/bin/nvcc. The toolkit root is the one that compiler reports
# (`nvcc -v`), so a wrapper script outside the toolkit (/usr/local/bin/nvcc
# running /usr/local/cuda-13.0/bin/nvcc) resolves to the real toolkit.

function(locallearn_choose_nvcc out_var)
  if(DEFINED CMAKE_CUDA_COMPILER)
    set(${out_var} "${CMAKE_CUDA_COMPILER}" PARENT_SCOPE)
    return()
  endif()
  if(DEFINED ENV{CUDACXX} AND NOT "$ENV{CUDACXX}" STREQUAL "")
    set(${out_var} "$ENV{CUDACXX}" PARENT_SCOPE)
    return()
  endif()
  foreach(root_variable CUDA_HOME CUDA_PATH)
    if(DEFINED ENV{${root_variable}} AND NOT "$ENV{${root_variable}}" STREQUAL "")
      if(NOT EXISTS "$ENV{${root_variable}}/bin/nvcc")
        message(FATAL_ERROR
          "${root_variable}=$ENV{${root_variable}} has no bin/nvcc: set it to the root of a CUDA toolkit, "
          "or unset it to build with the nvcc on PATH.")
      endif()
      set(${out_var} "$ENV{${root_variable}}/bin/nvcc" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  find_program(nvcc_on_path nvcc NO_CACHE)
  if(nvcc_on_path)
    set(${out_var} "${nvcc_on_path}" PARENT_SCOPE)
  elseif(EXISTS /usr/local/cuda/bin/nvcc)
    set(${out_var} /usr/local/cuda/bin/nvcc PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()

# Enables CUDA and sets the variables torch's FindCUDA and FindCUDAToolkit read.
macro(locallearn_enable_cuda torch_cuda_version)
  locallearn_choose_nvcc(locallearn_nvcc)
  if(NOT locallearn_nvcc)
    message(FATAL_ERROR
      "torch was built with CUDA ${torch_cuda_version}, so locallearn builds its CUDA ops, but no CUDA compiler "
      "was found (not in CUDACXX, $CUDA_HOME/bin, $CUDA_PATH/bin, on PATH or in /usr/local/cuda/bin). "
      "Install the CUDA ${torch_cuda_version} toolkit's compiler and set CUDA_HOME to its root "
      "(or CUDACXX to its nvcc), then build again.")
  endif()
  set(CMAKE_CUDA_COMPILER "${locallearn_nvcc}" CACHE FILEPATH "CUDA compiler")
  enable_language(CUDA)
  set(locallearn_cuda_root "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}")
  if(NOT EXISTS "${locallearn_cuda_root}/include/cuda_runtime.h")
    message(FATAL_ERROR
      "The CUDA compiler ${CMAKE_CUDA_COMPILER} reports the toolkit root '${locallearn_cuda_root}', which has no "
      "include/cuda_runtime.h. Set CUDA_HOME to the root of a CUDA ${torch_cuda_version} toolkit and build again.")
  endif()
  get_filename_component(locallearn_cuda_root "${locallearn_cuda_root}" REALPATH)
  message(STATUS "locallearn: CUDA toolkit ${locallearn_cuda_root} (compiler ${CMAKE_CUDA_COMPILER})")
  # torch's FindCUDA would otherwise derive the root from the first nvcc on PATH.
  set(CUDA_TOOLKIT_ROOT_DIR "${locallearn_cuda_root}" CACHE PATH "CUDA toolkit root" FORCE)
  set(CUDA_NVCC_EXECUTABLE "${locallearn_cuda_root}/bin/nvcc" CACHE FILEPATH "nvcc of the CUDA toolkit" FORCE)
  set(CUDAToolkit_ROOT "${locallearn_cuda_root}")
  # The architectures come from TORCH_CUDA_ARCH_LIST, as -gencode flags torch's package
  # adds; torch warns that it ignores CMake's own CMAKE_CUDA_ARCHITECTURES if that is
  # defined when its package loads, so it is unset until then (CMakeLists.txt sets it OFF).
  unset(CMAKE_CUDA_ARCHITECTURES)
  unset(CMAKE_CUDA_ARCHITECTURES CACHE)
endmacro()
