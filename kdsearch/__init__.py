"""kdsearch: find the best student to distil from a teacher under a latency budget.

    import kdsearch
    result = kdsearch.find(teacher="resnet101", budget="10ms")       # digits by default
    print(result.students)                                            # distilled, within budget
    kdsearch.export_student(result.run_dir, format="onnx", out="student/")
    model = kdsearch.load_student("student/")                        # after a safetensors export
"""

from kdsearch._version import __version__
from kdsearch.exceptions import KdsearchError
from kdsearch.spaces import create_model, load_space


def __getattr__(name):
    # Heavy stages import lazily so `import kdsearch` stays fast.
    if name in ("find", "FindResult", "train_student"):
        from kdsearch import pipeline

        return getattr(pipeline, name)
    if name in ("export_student", "load_student", "load_run_student"):
        import kdsearch.export as _export

        return getattr(_export, "export" if name == "export_student" else name)
    if name in ("build_report", "Report"):
        from kdsearch import report

        return getattr(report, name)
    if name in ("load_task",):
        from kdsearch.data import load_task

        return load_task
    if name in ("load_teacher",):
        from kdsearch.teacher import load_teacher

        return load_teacher
    raise AttributeError(name)


__all__ = [
    "__version__", "FindResult", "KdsearchError", "build_report", "create_model", "export_student", "find", "load_run_student",
    "load_space", "load_student", "load_task", "load_teacher", "train_student",
]
