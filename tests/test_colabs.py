"""The colabs: every notebook runs top to bottom without an error (nbclient, a kernel on this interpreter, the digits
from the test data dir, training shortened to a few steps), and the repository holds them without outputs."""
import glob
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(os.path.basename(p)[:-len('.ipynb')] for p in glob.glob(os.path.join(ROOT, 'colabs', '*.ipynb')))
KERNEL = 'vision-models-test'


def test_notebooks_are_stored_without_outputs():
  import nbformat
  assert {'quickstart', 'diffusion', 'scale'} <= set(NOTEBOOKS)
  for name in NOTEBOOKS:
    nb = nbformat.read(os.path.join(ROOT, 'colabs', f'{name}.ipynb'), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for cell in nb.cells:
      if cell.cell_type == 'code':
        assert cell.outputs == [] and cell.execution_count is None, f'{name}.ipynb: strip the outputs of {cell.id}'
    assert 'widgets' not in nb.metadata


def shorten(nb, steps: int = 40) -> None:
  """Trains `steps` steps instead of the notebook's `STEPS = N` (minutes on a shared CI machine); every cell still
  runs as written."""
  for cell in nb.cells:
    cell.source = re.sub(r'^STEPS = \d+', f'STEPS = {steps}', cell.source, flags=re.M)


@pytest.fixture
def kernel(tmp_path, monkeypatch, digits_dir):
  """A kernelspec running this interpreter (whatever kernels the machine has), the repository on its path and the
  digits in `$TFDS_DATA_DIR`."""
  spec_dir = tmp_path / 'jupyter' / 'kernels' / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'vision_models tests', 'language': 'python'}))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  monkeypatch.setenv('TFDS_DATA_DIR', digits_dir)
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  monkeypatch.setenv('TMPDIR', str(tmp_path))  # The notebooks' workdirs (tempfile.mkdtemp) go there.
  return KERNEL


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs(name, kernel):
  pytest.importorskip('ipykernel')
  import nbclient
  import nbformat
  nb = nbformat.read(os.path.join(ROOT, 'colabs', f'{name}.ipynb'), as_version=4)
  shorten(nb)
  client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=600,
                                   resources={'metadata': {'path': ROOT}})
  client.execute()  # Raises CellExecutionError, naming the cell and the traceback, on any error.
  errors = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.outputs if o.output_type == 'error']
  assert not errors
