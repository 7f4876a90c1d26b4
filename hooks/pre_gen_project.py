"""Reject invalid answers before anything is written; cookiecutter removes the folder on exit 1."""

import keyword
import re
import sys

SLUG = "{{ cookiecutter.project_slug }}"
PACKAGE = "{{ cookiecutter.package_name }}"
DATA_REMOTE = "{{ cookiecutter.data_remote }}"
DATA_REMOTE_URL = "{{ cookiecutter.data_remote_url }}"

# Import names the project depends on; a package with one of these names would shadow it.
TAKEN = {"torch", "monai", "mlflow", "dvc", "hydra", "hydra_plugins", "omegaconf", "nibabel", "numpy",
         "pandas", "yaml", "tests", "test", "src", "conf", "data"}


def problems() -> list[str]:
    found = []
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", SLUG):
        found.append(
            f"project_slug {SLUG!r} is invalid: use lowercase letters, digits and single '-' "
            "between them, starting with a letter (e.g. 'liver-seg')."
        )
    if not re.fullmatch(r"[a-z][a-z0-9_]*", PACKAGE) or keyword.iskeyword(PACKAGE):
        found.append(
            f"package_name {PACKAGE!r} is invalid: use lowercase letters, digits and '_', "
            "starting with a letter, and not a Python keyword (e.g. 'liver_seg')."
        )
    elif PACKAGE in TAKEN or PACKAGE in sys.stdlib_module_names:
        found.append(f"package_name {PACKAGE!r} would shadow the module of that name; choose another.")
    if DATA_REMOTE == "s3" and not DATA_REMOTE_URL.startswith("s3://"):
        found.append(f"data_remote_url {DATA_REMOTE_URL!r} must start with s3:// when data_remote is s3.")
    if DATA_REMOTE == "local" and not DATA_REMOTE_URL.strip():
        found.append("data_remote_url is empty: give the folder DVC should push data to.")
    return found


if __name__ == "__main__":
    errors = problems()
    for message in errors:
        print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(1 if errors else 0)
