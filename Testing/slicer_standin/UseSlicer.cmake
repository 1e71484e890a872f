# Stand-ins for the Slicer macros the modules call. slicerMacroBuildScriptedModule copies SCRIPTS and
# RESOURCES into <build>/<Slicer_QTSCRIPTEDMODULES_LIB_DIR> keeping their relative paths, as Slicer's
# macro does through ctkMacroCompilePythonScript; tests are not registered.
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  set(_commands)
  foreach(_file ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_file})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule(${MY_NAME}) given nonexistent file '${_file}'")
    endif()
    list(APPEND _commands COMMAND ${CMAKE_COMMAND} -E copy
      ${CMAKE_CURRENT_SOURCE_DIR}/${_file} ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${_file})
  endforeach()
  add_custom_target(${MY_NAME} ALL ${_commands})
endfunction()

function(slicer_add_python_unittest)
endfunction()
