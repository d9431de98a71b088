"""3D Slicer module: cohort → method → background training → review → correction → export.

This file is deliberately thin. Everything that does not need MRML lives in the
Slicer-free ``AnnotationEfficientSegLib`` package (tested with pytest and PySide6):
the panel's widgets and behaviour (``panel``), method forms generated from the core's
config schema (``forms``), background processes and cancel (``process``), progress from
``events.jsonl`` (``events``), the review queue (``review``) and refined-label files
(``refined``). Training itself runs in a separate process, ``PythonSlicer -m aeseg``.

What is here: the module/widget/logic/test classes, the parameter node, installing the
Python dependencies on first use, and the MRML side of reviewing a case (volume and
segmentation nodes, per-pixel map overlays, Segment Editor hand-off, Accept) and of
applying a job's model to the shown volume (writing the volume, loading the result).
"""

import hashlib
import json
import logging
import math
import os
import traceback
from typing import Annotated, Optional

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, Default, Maximum, Minimum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from AnnotationEfficientSegLib import process as aeprocess
from AnnotationEfficientSegLib import refined as aerefined
from AnnotationEfficientSegLib.panel import Panel
from AnnotationEfficientSegLib.review import REVIEW_SEGMENTS, CaseFiles, ReviewQueue, ReviewRow, case_files, map_display


#
# AnnotationEfficientSeg
#


class AnnotationEfficientSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Annotation-Efficient Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []  # PyTorchUtils (PyTorch extension) is needed only to install torch
        self.parent.contributors = ["AnnotationEfficientSeg contributors"]
        self.parent.helpText = """
Train segmentation models from imperfect or partial annotations (noisy labels, few clean labels,
unlabelled cases) and review the cases the model doubts, with training in the background.
Choose a cohort folder, a method and press Start; open the job to review flagged cases, correct them
in the Segment Editor and Accept; retrain with the refined labels; export them.
See the <a href="https://github.com/AnnotationEfficientSeg/AnnotationEfficientSeg#using-it-in-3d-slicer">documentation</a>.
"""
        self.parent.acknowledgementText = """
Built on the 3D Slicer scripted-module template, MONAI and PyTorch (installed through the PyTorch extension).
"""


#
# Parameter node
#


@parameterNodeWrapper
class AnnotationEfficientSegParameterNode:
    """GUI state saved with the scene. Widgets in the .ui name their parameter (SlicerParameterName).

    The method, device and per-method settings are one JSON string (``panelState``)
    because the forms are generated at run time from ``aeseg methods --json``.
    """

    cohortPath: str
    outputPath: str
    jobPath: str
    exportPath: str
    seed: Annotated[int, Minimum(0), Maximum(2147483647), Default(0)]
    epochs: Annotated[int, Minimum(0), Maximum(100000), Default(0)]  # 0: the core's default
    extraSettings: str  # more "key=value" settings for --set
    exportFormat: Annotated[str, Choice(["nifti", "seg.nrrd", "nnunet"]), Default("seg.nrrd")]
    panelState: str
    currentCase: str
    caseVolume: vtkMRMLScalarVolumeNode
    caseSegmentation: vtkMRMLSegmentationNode


#
# AnnotationEfficientSegWidget
#


class AnnotationEfficientSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._declinedInstall = False
        self._ignoreNextCase = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AnnotationEfficientSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        self.logic = AnnotationEfficientSegLogic()
        self.panel = Panel(
            uiWidget,
            python=self.logic.pythonExecutable(),
            python_path=[self.logic.moduleDir],
            log_dir=os.path.join(slicer.app.temporaryPath, "AnnotationEfficientSeg"),
        )
        self.panel.preflight = self.onPreflight
        self.panel.caseSelected.connect(self.onCaseSelected)
        self.panel.mapSelected.connect(self.onMapSelected)
        self.panel.acceptRequested.connect(self.onAccept)
        self.panel.editRequested.connect(self.onEdit)
        self.panel.stateChanged.connect(self.onPanelStateChanged)
        self.panel.jobFinished.connect(self.onJobFinished)
        self.panel.volume_to_predict = self.logic.writeShownVolume
        self.panel.predictionReady.connect(self.onPredictionReady)
        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.initializeParameterNode()
        self.updateDependencyStatus()
        if not self.logic.missingDependencies():
            self.panel.refresh_methods()
            self.panel.refresh_devices()

    def cleanup(self) -> None:
        """Slicer closes: stop polling; a running job is asked to stop after its step (it can be resumed)."""
        self.removeObservers()
        if self.panel is not None:
            self.panel.shutdown(cancel_running=True)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        if self.logic:
            self.logic.forgetCaseNodes()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[AnnotationEfficientSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            if self._parameterNode.panelState:
                try:
                    self.panel.set_state(json.loads(self._parameterNode.panelState))
                except (ValueError, TypeError):
                    logging.warning("AnnotationEfficientSeg: ignoring an unreadable saved panel state")

    def onPanelStateChanged(self) -> None:
        if self._parameterNode:
            self._parameterNode.panelState = json.dumps(self.panel.get_state())

    # -- dependencies

    def updateDependencyStatus(self) -> None:
        missing = self.logic.missingDependencies()
        self.ui.dependencyWidget.setVisible(bool(missing))
        if missing:
            self.ui.dependencyLabel.setText(
                "Training needs Python packages that are not installed yet: " + ", ".join(missing) + ".")

    def onInstallDependencies(self) -> None:
        self._declinedInstall = False
        if self.installDependencies(askConfirmation=True):
            self.panel.refresh_methods()
            self.panel.refresh_devices()

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        try:
            ok = self.logic.installDependencies(askConfirmation=askConfirmation)
        except DependencyDeclined:
            self._declinedInstall = True
            self.panel.show_message(
                "Not installed: " + ", ".join(self.logic.missingDependencies())
                + ". Validation and training need them; press 'Install…' at the top of the panel when ready "
                "(PyTorch comes from the PyTorch extension, the rest from PyPI).", "error")
            ok = False
        except Exception as e:  # noqa: BLE001 - shown to the user with details
            logging.error(traceback.format_exc())
            slicer.util.errorDisplay(f"Installing the Python packages failed:\n{e}\n\n"
                                     "Check the internet connection and free disk space, restart Slicer and try again. "
                                     "Details are in the Python console.", detailedText=traceback.format_exc())
            self.panel.show_message(f"Installing the Python packages failed: {e}", "error")
            ok = False
        self.updateDependencyStatus()
        return ok

    def onPreflight(self, action: str) -> bool:
        """Called by the panel before running aeseg; asks to install what is missing (once per request)."""
        if not self.logic.missingDependencies():
            return True
        background = action in ("methods", "devices") or action.endswith("-auto")
        if background or self._declinedInstall:
            self.updateDependencyStatus()
            if self._declinedInstall and not background:
                self.panel.show_message("Python packages are missing: press 'Install…' at the top of the panel.",
                                        "error")
            return False
        return self.installDependencies(askConfirmation=True)

    # -- review

    def onCaseSelected(self, files: CaseFiles, row: Optional[ReviewRow]) -> None:
        if self._ignoreNextCase == files.case:
            self._ignoreNextCase = None
            return
        previous = self.logic.currentCase
        if previous and previous != files.case and self.logic.correctedChanged():
            if not slicer.util.confirmYesNoDisplay(
                    f"The 'Corrected' segment of {previous} was edited but not accepted. Discard the edits?"):
                self._ignoreNextCase = previous
                self.panel.select_case(previous)
                return
        with slicer.util.tryWithErrorDisplay(f"Failed to load case {files.case}.", waitCursor=True):
            volumeNode, segNode = self.logic.loadCase(files, row, jobDir=self.panel.job_dir)
            if self._parameterNode:
                self._parameterNode.currentCase = files.case
                self._parameterNode.caseVolume = volumeNode
                self._parameterNode.caseSegmentation = segNode

    def onMapSelected(self, case: str, name: Optional[str], path: Optional[str]) -> None:
        with slicer.util.tryWithErrorDisplay(f"Failed to show the map {name}.", waitCursor=True):
            self.logic.showMap(case, name, path)

    def onEdit(self, case: str) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to open the Segment Editor.", waitCursor=True):
            self.logic.openSegmentEditor()

    def onAccept(self, case: str) -> None:
        if self.logic.currentCase != case:
            self.panel.show_message(f"Load {case} first (select it in the table).", "warning")
            return
        cohort = self.panel.job.get("cohort") or self.panel.cohort_path
        if not cohort:
            self.panel.show_message("The job does not name its cohort: cannot write refined labels.", "error")
            return
        with slicer.util.tryWithErrorDisplay(f"Failed to save the refined label of {case}.", waitCursor=True):
            row = self.panel.queue.row(case) if self.panel.queue else None
            result = self.logic.acceptCase(cohort, case, jobDir=self.panel.job_dir, row=row)
            self.panel.mark_reviewed(case, result.path)
            self.panel.show_message(result.message(case), "ok")

    def onPredictionReady(self, path: str, volumeName: str) -> None:
        with slicer.util.tryWithErrorDisplay(f"Failed to load the segmentation of {volumeName}.", waitCursor=True):
            self.logic.loadPrediction(path, volumeName)

    def onJobFinished(self, status: str) -> None:
        if status == "error" and self.panel.watcher is not None:
            slicer.util.errorDisplay("Training failed: " + (self.panel.watcher.state.message or "unknown error")
                                     + "\n\nThe last messages of the run are in the panel's log.")


class DependencyDeclined(Exception):
    """The user chose not to install the Python packages."""


#
# AnnotationEfficientSegLogic
#


class AnnotationEfficientSegLogic(ScriptedLoadableModuleLogic):
    """MRML side of reviewing: loading a case, map overlays, the Segment Editor, accepting a correction,
    writing the shown volume for a model and loading its segmentation.

    Usable without the widget (see the test below)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleDir = os.path.dirname(os.path.abspath(__file__))
        self.currentCase = None
        self.volumeNode = None
        self.segmentationNode = None
        self.mapNode = None
        self._correctedDigest = None
        self.predictedVolumeId = None  # the volume writeShownVolume wrote last

    def getParameterNode(self):
        return AnnotationEfficientSegParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        return aeprocess.default_python(in_slicer=True)

    # -- dependencies

    @staticmethod
    def missingDependencies() -> list:
        missing = aeprocess.missing_modules(["torch"])
        return missing + aeprocess.missing_requirements()

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """PyTorch through the PyTorch extension, the core's other requirements with pip_install."""
        missing = self.missingDependencies()
        if not missing:
            return True
        if askConfirmation and not slicer.app.commandOptions().testingEnabled:
            if not slicer.util.confirmOkCancelDisplay(
                    "AnnotationEfficientSeg trains in a separate Python process and needs these Python packages, "
                    "which are not installed yet:\n\n  " + "\n  ".join(missing)
                    + "\n\nPyTorch is installed by the PyTorch extension (the right build for your GPU, or the CPU "
                    "build); the others from PyPI. This downloads up to a few GB and can take several minutes. "
                    "Install now?", "Install Python packages"):
                raise DependencyDeclined()
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError("This module needs the PyTorch extension to install PyTorch. Install 'PyTorch' "
                                   "from the Extensions Manager, restart Slicer and try again.") from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                slicer.util.showStatusMessage("Installing PyTorch… (this can take several minutes)")
                torch = torchLogic.installTorch(askConfirmation=False,
                                                torchVersionRequirement=aeprocess.TORCH_REQUIREMENT)
                if torch is None:
                    raise RuntimeError("PyTorch was not installed. Use the 'PyTorch Utils' module to install it.")
        for requirement in aeprocess.missing_requirements():
            slicer.util.showStatusMessage(f"Installing {requirement}…")
            slicer.util.pip_install(requirement)
        slicer.util.showStatusMessage("")
        still = self.missingDependencies()
        if still:
            raise RuntimeError("still missing after installation: " + ", ".join(still) + " (a restart may help)")
        return True

    # -- loading a case

    def forgetCaseNodes(self) -> None:
        self.currentCase = self.volumeNode = self.segmentationNode = self.mapNode = None
        self._correctedDigest = None

    def clearCase(self) -> None:
        for node in (self.mapNode, self.segmentationNode, self.volumeNode):
            if node is not None and slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)
        self.forgetCaseNodes()

    def loadCase(self, files: CaseFiles, row: Optional[ReviewRow] = None, jobDir=None):
        """Load a case's image and a segmentation with "Given label", "Pseudo label" and "Corrected".

        "Corrected" starts from the latest refined label, else the job's correction, else the
        pseudo label, else the given label. Segment tags carry the quality row; flagged cases
        get Slicer's Flagged status. Returns (volume node, segmentation node).
        """
        if not files.image:
            raise ValueError(f"no image found for case {files.case}")
        self.clearCase()
        case = files.case
        volumeNode = self._loadImage(files.image, f"{case} image")
        segNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case} review")
        segNode.CreateDefaultDisplayNodes()
        segNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)

        given = self._labelMask(files.label, files.label_value, volumeNode) if files.label else None
        if given is None and files.pseudo_label:
            given = self._segMask(files.pseudo_label, "Given label", volumeNode, fallbackToOnly=False)
        pseudo = self._segMask(files.pseudo_label, "Pseudo label", volumeNode) if files.pseudo_label else None
        corrected, source = None, "empty"
        for src, path, name in (("refined", files.refined, None), ("correction", files.correction, "Corrected"),
                                ("pseudo_label", None, None), ("given_label", None, None)):
            if src == "pseudo_label":
                corrected = pseudo
            elif src == "given_label":
                corrected = given
            elif path:
                corrected = self._segMask(path, name, volumeNode)
            if corrected is not None:
                source = src
                break
        masks = {"Given label": given, "Pseudo label": pseudo, "Corrected": corrected}

        segmentation = segNode.GetSegmentation()
        display = segNode.GetDisplayNode()
        flagged = bool(row is not None and row.flag)
        for name, colour in REVIEW_SEGMENTS:
            segmentId = segmentation.AddEmptySegment(name.replace(" ", "_"), name, list(colour))
            mask = masks[name]
            if mask is not None and mask.any():
                slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segNode, segmentId,
                                                                 volumeNode)
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(*colour)
            segment.SetTag("AESeg.Case", case)
            if row is not None:
                segment.SetTag("AESeg.Score", "" if row.score is None else f"{row.score:g}")
                segment.SetTag("AESeg.Rank", "" if row.rank is None else str(row.rank))
                segment.SetTag("AESeg.Flag", "true" if row.flag else "false")
                for key, value in row.extra.items():
                    segment.SetTag(f"AESeg.{key}", "" if value is None else str(value))
            if jobDir:
                segment.SetTag("AESeg.Job", str(jobDir))
            if name == "Corrected":
                segment.SetTag("AESeg.Source", source)
                _setSegmentStatus(segment, "completed" if source == "refined" else "inprogress")
            else:
                _setSegmentStatus(segment, "flagged" if flagged else "completed")
        # given label as an outline, pseudo label lightly filled, corrected filled
        if display is not None:
            for name, fill in (("Given label", 0.0), ("Pseudo label", 0.25), ("Corrected", 0.5)):
                display.SetSegmentOpacity2DFill(segmentation.GetSegmentIdBySegmentName(name), fill)

        slicer.util.setSliceViewerLayers(background=volumeNode, foreground=None, label=None, fit=True)
        self.currentCase, self.volumeNode, self.segmentationNode = case, volumeNode, segNode
        self._correctedDigest = self._digestCorrected()
        return volumeNode, segNode

    @staticmethod
    def _loadImage(path: str, name: str):
        if os.path.isdir(path):  # a DICOM series folder: load the series from its first file
            files = sorted(f for f in os.listdir(path) if not f.startswith("."))
            if not files:
                raise ValueError(f"empty image folder: {path}")
            return slicer.util.loadVolume(os.path.join(path, files[0]), {"show": False, "name": name,
                                                                         "singleFile": False})
        return slicer.util.loadVolume(path, {"show": False, "name": name})

    @staticmethod
    def _labelMask(path: str, labelValue, volumeNode):
        """A label file as a boolean (k, j, i) array on the image grid (label_value, else any non-zero)."""
        labelNode = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            arr = slicer.util.arrayFromVolume(labelNode)
            if arr.ndim == 4:  # an RGB label image: any channel
                arr = arr.max(axis=-1)
            refShape = slicer.util.arrayFromVolume(volumeNode).shape[:3]
            if arr.shape == refShape and _sameGrid(labelNode, volumeNode):
                return (arr == labelValue) if labelValue else (arr != 0)
            # another grid: let Slicer resample through a segmentation
            tmp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            try:
                tmp.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
                slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelNode, tmp)
                mask = np.zeros(refShape, dtype=bool)
                ids = vtk.vtkStringArray()
                tmp.GetSegmentation().GetSegmentIDs(ids)
                for i in range(ids.GetNumberOfValues()):
                    segment = tmp.GetSegmentation().GetSegment(ids.GetValue(i))
                    if labelValue and segment.GetLabelValue() != int(labelValue):
                        continue
                    mask |= slicer.util.arrayFromSegmentBinaryLabelmap(tmp, ids.GetValue(i), volumeNode) != 0
                return mask
            finally:
                slicer.mrmlScene.RemoveNode(tmp)
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)

    @staticmethod
    def _segMask(path: str, segmentName: Optional[str], volumeNode, fallbackToOnly: bool = True):
        """One segment of a .seg.nrrd as a boolean (k, j, i) array on the image grid (None if absent)."""
        tmp = slicer.util.loadSegmentation(path, {"show": False})
        if tmp is None:
            raise RuntimeError(f"cannot read {path}")
        try:
            segmentation = tmp.GetSegmentation()
            segmentId = segmentation.GetSegmentIdBySegmentName(segmentName) if segmentName else ""
            if not segmentId and (segmentName is None or fallbackToOnly) and segmentation.GetNumberOfSegments() >= 1:
                segmentId = segmentation.GetNthSegmentID(0)
            if not segmentId:
                return None
            return slicer.util.arrayFromSegmentBinaryLabelmap(tmp, segmentId, volumeNode) != 0
        finally:
            slicer.mrmlScene.RemoveNode(tmp)

    # -- maps

    def showMap(self, case: str, name: Optional[str], path: Optional[str]) -> None:
        """Show a per-pixel map (weights, residuals…) in colour over the image, or none."""
        if self.mapNode is not None and slicer.mrmlScene.IsNodePresent(self.mapNode):
            slicer.mrmlScene.RemoveNode(self.mapNode)
        self.mapNode = None
        if not path:
            slicer.util.setSliceViewerLayers(foreground=None)
            return
        mapNode = slicer.util.loadVolume(path, {"show": False, "name": f"{case} {name}"})
        display = mapNode.GetDisplayNode()
        if display is not None:
            values = slicer.util.arrayFromVolume(mapNode)
            finite = values[np.isfinite(values)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (math.nan, math.nan)
            style = map_display(name or "", low, high)
            for colorNodeId in style.colors:
                if slicer.mrmlScene.GetNodeByID(colorNodeId):
                    display.SetAndObserveColorNodeID(colorNodeId)
                    break
            if style.window is None:
                display.AutoWindowLevelOn()
            else:
                display.AutoWindowLevelOff()
                display.SetWindowLevel(style.window, style.level)
        self.mapNode = mapNode
        slicer.util.setSliceViewerLayers(background=self.volumeNode, foreground=mapNode, foregroundOpacity=0.5)

    # -- correcting

    def correctedSegmentId(self) -> str:
        if self.segmentationNode is None:
            raise ValueError("no case is loaded")
        segmentId = self.segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Corrected")
        if not segmentId:
            raise ValueError("the 'Corrected' segment was removed: reload the case")
        return segmentId

    def correctedMask(self) -> np.ndarray:
        arr = slicer.util.arrayFromSegmentBinaryLabelmap(self.segmentationNode, self.correctedSegmentId(),
                                                         self.volumeNode)
        return arr != 0

    def _digestCorrected(self):
        try:
            return hashlib.sha1(np.packbits(self.correctedMask()).tobytes()).hexdigest()
        except Exception:  # noqa: BLE001 - only used to warn about unaccepted edits
            return None

    def correctedChanged(self) -> bool:
        if self.segmentationNode is None or not slicer.mrmlScene.IsNodePresent(self.segmentationNode):
            return False
        return self._digestCorrected() != self._correctedDigest

    def openSegmentEditor(self) -> None:
        """Hand the case to the Segment Editor with "Corrected" selected."""
        if self.segmentationNode is None:
            raise ValueError("select a case first")
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(self.segmentationNode)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(self.volumeNode)
        else:  # Slicer < 5.4
            editor.setMasterVolumeNode(self.volumeNode)
        editor.setCurrentSegmentID(self.correctedSegmentId())

    def acceptCase(self, cohort: str, case: str, jobDir=None, row: Optional[ReviewRow] = None):
        """Write "Corrected" to cohort/refined/<case>.seg.nrrd (an earlier version is kept in history)."""
        if case != self.currentCase:
            raise ValueError(f"case {case} is not the loaded one ({self.currentCase})")
        mask = self.correctedMask()
        ijkToRas = vtk.vtkMatrix4x4()
        self.volumeNode.GetIJKToRASMatrix(ijkToRas)
        ijkToLps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(ijkToRas)
        tags = {"AESeg.Job": str(jobDir or "")}
        if row is not None:
            tags.update({"AESeg.Method": row.method, "AESeg.Score": "" if row.score is None else f"{row.score:g}",
                         "AESeg.Flag": "true" if row.flag else "false"})
        result = aerefined.write_refined(cohort, case, mask, ijkToLps, tags=tags)
        segment = self.segmentationNode.GetSegmentation().GetSegment(self.correctedSegmentId())
        segment.SetTag("AESeg.Refined", str(result.path))
        _setSegmentStatus(segment, "completed")
        self._correctedDigest = self._digestCorrected()
        return result


    # -- applying a job's model

    @staticmethod
    def shownVolume():
        """The volume in the red slice view's background, else the active volume; None if neither."""
        volumeId = None
        layoutManager = slicer.app.layoutManager()
        red = layoutManager.sliceWidget("Red") if layoutManager else None
        if red is not None:
            volumeId = red.sliceLogic().GetSliceCompositeNode().GetBackgroundVolumeID()
        if not volumeId:
            volumeId = slicer.app.applicationLogic().GetSelectionNode().GetActiveVolumeID()
        node = slicer.mrmlScene.GetNodeByID(volumeId) if volumeId else None
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            return None
        return node

    def writeShownVolume(self, folder) -> tuple:
        """Write the shown volume with its geometry as ``folder/volume.nrrd`` for ``aeseg predict``.

        Returns (file, volume name). The node keeps its own storage (``sitkUtils`` copies the voxels)."""
        import SimpleITK as sitk
        import sitkUtils

        node = self.shownVolume()
        if node is None:
            raise ValueError("show a volume in the slice views first")
        path = os.path.join(str(folder), "volume.nrrd")
        sitk.WriteImage(sitkUtils.PullVolumeFromSlicer(node), path, True)
        self.predictedVolumeId = node.GetID()
        return path, node.GetName()

    def loadPrediction(self, path: str, volumeName: str):
        """Load ``aeseg predict``'s segmentation over the volume it was computed from, ready to edit."""
        segNode = slicer.util.loadSegmentation(path, {"name": slicer.mrmlScene.GenerateUniqueName(f"{volumeName} model")})
        volumeNode = slicer.mrmlScene.GetNodeByID(self.predictedVolumeId) if self.predictedVolumeId else None
        if volumeNode is not None:
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segNode.CreateDefaultDisplayNodes()
        return segNode


def _sameGrid(a, b) -> bool:
    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetIJKToRASMatrix(ma)
    b.GetIJKToRASMatrix(mb)
    return bool(np.allclose(slicer.util.arrayFromVTKMatrix(ma), slicer.util.arrayFromVTKMatrix(mb), atol=1e-3))


def _setSegmentStatus(segment, status: str) -> None:
    """Slicer's segment status (notstarted, inprogress, completed, flagged)."""
    logic = getattr(slicer, "vtkSlicerSegmentationsModuleLogic", None)
    codes = {"notstarted": "NotStarted", "inprogress": "InProgress", "completed": "Completed", "flagged": "Flagged"}
    if logic is not None and hasattr(logic, "SetSegmentStatus") and hasattr(logic, codes[status]):
        logic.SetSegmentStatus(segment, getattr(logic, codes[status]))
    else:
        segment.SetTag("Segmentation.Status", status)


#
# AnnotationEfficientSegTest
#


class AnnotationEfficientSegTest(ScriptedLoadableModuleTest):
    """Loads a tiny phantom job folder (written here, no training) and checks the segment nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomJob()

    def _writePhantom(self, root):
        import csv

        import SimpleITK as sitk

        cohort, job = os.path.join(root, "cohort"), os.path.join(root, "job")
        for folder in (os.path.join(cohort, "images"), os.path.join(cohort, "labels"),
                       os.path.join(job, "pseudo_labels")):
            os.makedirs(folder, exist_ok=True)
        zz, yy, xx = np.mgrid[0:6, 0:20, 0:24]
        for case, r in (("case01", 6.0), ("case02", 4.0)):
            dist = np.sqrt((xx - 12) ** 2 + (yy - 10) ** 2 + ((zz - 3) * 2.5) ** 2)
            image = sitk.GetImageFromArray((100.0 * (dist < r + 1) + 5.0 * zz).astype(np.float32))
            label = sitk.GetImageFromArray((dist < r).astype(np.uint8))
            for img in (image, label):
                img.SetSpacing((0.8, 0.8, 2.0))
                img.SetOrigin((10.0, -5.0, 3.0))
            sitk.WriteImage(image, os.path.join(cohort, "images", f"{case}.nrrd"))
            sitk.WriteImage(label, os.path.join(cohort, "labels", f"{case}.nii.gz"))
            # the job's pseudo label: a smaller blob, written by Slicer itself as .seg.nrrd
            volumeNode = slicer.util.loadVolume(os.path.join(cohort, "images", f"{case}.nrrd"), {"show": False})
            segNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentId = segNode.GetSegmentation().AddEmptySegment("pseudo", "Pseudo label")
            slicer.util.updateSegmentBinaryLabelmapFromArray((dist < r - 1).astype(np.uint8), segNode, segmentId,
                                                             volumeNode)
            self.assertTrue(slicer.util.saveNode(segNode, os.path.join(job, "pseudo_labels", f"{case}.seg.nrrd")))
            slicer.mrmlScene.RemoveNode(segNode)
            slicer.mrmlScene.RemoveNode(volumeNode)
        os.makedirs(os.path.join(job, "maps", "case01"), exist_ok=True)
        residual = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 20, 24)).astype(np.float32))
        residual.SetSpacing((0.8, 0.8, 2.0))
        residual.SetOrigin((10.0, -5.0, 3.0))
        sitk.WriteImage(residual, os.path.join(job, "maps", "case01", "residuals.nrrd"))
        with open(os.path.join(job, "quality.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "method", "score", "flag", "rank", "residual_energy"])
            w.writerow(["case01", "supervised", "0.2", "true", "1", "3.5"])
            w.writerow(["case02", "supervised", "0.9", "false", "2", "0.4"])
        with open(os.path.join(job, "job.json"), "w") as f:
            json.dump({"method": "supervised", "cohort": cohort, "config": {}, "seed": 0}, f)
        with open(os.path.join(job, "events.jsonl"), "w") as f:
            f.write(json.dumps({"type": "start", "epochs": 1}) + "\n" + json.dumps({"type": "done"}) + "\n")
        return cohort, job

    def test_PhantomJob(self):
        self.delayDisplay("Writing a phantom job folder")
        root = slicer.util.tempDirectory()
        cohort, job = self._writePhantom(root)
        logic = AnnotationEfficientSegLogic()
        queue = ReviewQueue.load(job)
        self.assertEqual(queue.cases(), ["case01", "case02"])

        self.delayDisplay("Loading a flagged case")
        row = queue.row("case01")
        files = case_files(job, "case01")
        volumeNode, segNode = logic.loadCase(files, row, jobDir=job)
        segmentation = segNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 3)
        names = [segmentation.GetNthSegment(i).GetName() for i in range(3)]
        self.assertEqual(names, ["Given label", "Pseudo label", "Corrected"])
        colours = {tuple(round(c, 2) for c in segmentation.GetNthSegment(i).GetColor()) for i in range(3)}
        self.assertEqual(len(colours), 3)
        segLogic = slicer.vtkSlicerSegmentationsModuleLogic
        pseudo = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Pseudo label"))
        self.assertEqual(pseudo.GetTag("AESeg.Score"), "0.2")
        self.assertEqual(pseudo.GetTag("AESeg.residual_energy"), "3.5")
        if hasattr(segLogic, "GetSegmentStatus"):
            self.assertEqual(segLogic.GetSegmentStatus(pseudo), segLogic.Flagged)
        given = slicer.util.arrayFromSegmentBinaryLabelmap(
            segNode, segmentation.GetSegmentIdBySegmentName("Given label"), volumeNode) != 0
        pseudoMask = slicer.util.arrayFromSegmentBinaryLabelmap(
            segNode, segmentation.GetSegmentIdBySegmentName("Pseudo label"), volumeNode) != 0
        self.assertGreater(int(given.sum()), int(pseudoMask.sum()))  # the pseudo label is the smaller blob
        self.assertGreater(int(pseudoMask.sum()), 0)
        self.assertTrue(np.array_equal(logic.correctedMask(), pseudoMask))  # Corrected starts as the pseudo label
        self.assertFalse(logic.correctedChanged())

        self.delayDisplay("Showing a per-pixel map")
        logic.showMap("case01", "residuals", files.maps["residuals"])
        self.assertIsNotNone(logic.mapNode)
        values = slicer.util.arrayFromVolume(logic.mapNode)
        style = map_display("residuals", float(values.min()), float(values.max()))
        mapDisplay = logic.mapNode.GetDisplayNode()
        if slicer.mrmlScene.GetNodeByID(style.colors[0]):
            self.assertEqual(mapDisplay.GetColorNodeID(), style.colors[0])
        if style.window is not None:
            self.assertAlmostEqual(mapDisplay.GetWindow(), style.window, places=4)
            self.assertAlmostEqual(mapDisplay.GetLevel(), style.level, places=4)

        self.delayDisplay("Loading an unflagged case")
        volumeNode2, segNode2 = logic.loadCase(case_files(job, "case02"), queue.row("case02"), jobDir=job)
        self.assertFalse(slicer.mrmlScene.IsNodePresent(segNode))  # the previous case was unloaded
        pseudo2 = segNode2.GetSegmentation().GetSegment(
            segNode2.GetSegmentation().GetSegmentIdBySegmentName("Pseudo label"))
        if hasattr(segLogic, "GetSegmentStatus"):
            self.assertNotEqual(segLogic.GetSegmentStatus(pseudo2), segLogic.Flagged)

        try:
            import slicerio  # noqa: F401 - written by the core's requirements
        except ImportError:
            self.delayDisplay("slicerio is not installed: skipping Accept")
        else:
            self.delayDisplay("Accepting twice keeps the earlier version")
            first = logic.acceptCase(cohort, "case02", jobDir=job, row=queue.row("case02"))
            second = logic.acceptCase(cohort, "case02", jobDir=job, row=queue.row("case02"))
            self.assertIsNone(first.previous)
            self.assertTrue(os.path.exists(second.path) and second.previous and os.path.exists(second.previous))
            self.assertEqual(len(aerefined.history_paths(cohort, "case02")), 1)
            mask, _, _ = aerefined.read_refined(second.path)
            self.assertEqual(int(mask.sum()), int(logic.correctedMask().sum()))

        self.delayDisplay("Writing the shown volume for a model, loading a segmentation over it")
        import SimpleITK as sitk

        slicer.util.setSliceViewerLayers(background=volumeNode2, fit=True)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveVolumeID(volumeNode2.GetID())  # no layout: ctest
        folder = slicer.util.tempDirectory()
        path, name = logic.writeShownVolume(folder)
        self.assertEqual(name, volumeNode2.GetName())
        written = sitk.ReadImage(path)
        original = sitk.ReadImage(os.path.join(cohort, "images", "case02.nrrd"))
        self.assertTrue(np.allclose(written.GetSpacing(), original.GetSpacing())
                        and np.allclose(written.GetOrigin(), original.GetOrigin()))
        self.assertTrue(np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original)))
        predicted = logic.loadPrediction(os.path.join(job, "pseudo_labels", "case02.seg.nrrd"), name)
        self.assertEqual(predicted.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertTrue(predicted.GetName().startswith(name))

        self.delayDisplay("The panel (PythonQt) opens the job")
        widget = slicer.modules.annotationefficientseg.widgetRepresentation().self()
        self.assertTrue(widget.panel.open_job(job))
        self.assertEqual(widget.panel.ui.reviewTable.rowCount, 2)
        self.delayDisplay("Test passed")
