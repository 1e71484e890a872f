"""What both LiverTumorAI modules share, free of Qt and the Slicer application (except ``widgetbase``):
MRML <-> ``livertumor`` conversion (:mod:`.mrml`), the out-of-process runner (:mod:`.process`), jobs and
their state machine (:mod:`.jobs`), the dependency-install flow (:mod:`.dependencies`) and the
terminology registration (:mod:`.terminology`).

The extension bundles this package beside the modules and the ``livertumor`` library (root
CMakeLists.txt), in the build tree and in the installed extension alike.
"""
