# Finds the CUDA toolkit for a torch that has CUDA; a compiler-only toolkit (nvcc, its
# headers and the CUDA runtime) is enough: locallearn links no other CUDA library.
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

# Enables CUDA and finds the toolkit (CUDA::cudart).
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
  set(CUDAToolkit_ROOT "${locallearn_cuda_root}")
  find_package(CUDAToolkit REQUIRED)
endmacro()

# TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX", ";" or " " separated, as torch spells it) as
# CMAKE_CUDA_ARCHITECTURES: X.Y is SASS for sm_XY, X.Y+PTX also PTX that newer GPUs compile.
function(locallearn_cuda_architectures arch_list out_var)
  string(REPLACE " " ";" arch_list "${arch_list}")
  set(architectures "")
  foreach(arch IN LISTS arch_list)
    if(NOT arch MATCHES "^([0-9]+)\\.([0-9]+)(\\+PTX)?$")
      message(FATAL_ERROR "TORCH_CUDA_ARCH_LIST entry '${arch}' is not of the form 8.0 or 9.0+PTX")
    endif()
    list(APPEND architectures "${CMAKE_MATCH_1}${CMAKE_MATCH_2}-real")
    if(CMAKE_MATCH_3)
      list(APPEND architectures "${CMAKE_MATCH_1}${CMAKE_MATCH_2}-virtual")
    endif()
  endforeach()
  set(${out_var} "${architectures}" PARENT_SCOPE)
endfunction()
