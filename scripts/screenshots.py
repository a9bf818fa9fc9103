"""Screenshots of the programs in the README's "Try it" section, taken from the programs themselves.

  python scripts/screenshots.py --out docs [--only live,webapp,notebook]

live      `python -m experiments.live` in its OpenCV window on a virtual X display (Xvfb), playing a built-in clip
          (photographs under known motion, `tapir.data.realpix`) with a 4 x 4 grid; one more point is clicked in
          with xdotool (a real X click), then the screen is grabbed from the X server and `q` is pressed.
webapp    `python -m experiments.webapp --random_weights` driven in headless Chromium (selenium): the built-in
          clip, a 4 x 4 grid, Track, and the page once the painted video is back.
notebook  notebooks/tapir_demo.ipynb executed as it is (nbclient), converted to HTML (nbconvert) and photographed
          in headless Chromium (selenium) at its online and rainbow sections.

Untrained weights (nothing is downloaded), so the tracks mean nothing; the pictures show the programs.
Needs Xvfb and xdotool (Debian packages), the demo extra (opencv-python), nbconvert, Chromium and chromedriver.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from tapir import video as video_io
from tapir.data import realpix

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISPLAY = ':77'
TITLE = 'tapir live'  # experiments.live's window


def _xdotool(*args: str) -> str:
  return subprocess.run(['xdotool', *args], capture_output=True, text=True, timeout=120, check=True).stdout


def _geometry(window: str) -> tuple[int, int, int, int]:
  fields = dict(line.split('=') for line in _xdotool('getwindowgeometry', '--shell', window).split())
  return tuple(int(fields[k]) for k in ('X', 'Y', 'WIDTH', 'HEIGHT'))


def live_screenshot(out: str, seconds: float = 6.0) -> None:
  """The live demo's window after `seconds` of a built-in clip at 256 x 256 (looped forwards and back)."""
  from PIL import ImageGrab  # pylint: disable=g-import-not-at-top
  clip = realpix.generate_clip(realpix.TRAIN_SEED_OFFSET + 7, realpix.RealPixConfig(height=256, width=256))
  video = np.concatenate([clip.video, clip.video[::-1]] * 8)  # 16 s at 24 fps: the window stays up
  server = subprocess.Popen(['Xvfb', DISPLAY, '-screen', '0', '800x600x24'], stderr=subprocess.DEVNULL)
  env = dict(os.environ, DISPLAY=DISPLAY)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'clip.mp4')
    video_io.write_video(path, video, fps=24)
    time.sleep(1.0)
    demo = subprocess.Popen([sys.executable, '-m', 'experiments.live', '--source', path, '--random_weights',
                             '--grid', '4', '--max_points', '32'], cwd=REPO, env=env)
    try:
      os.environ['DISPLAY'] = DISPLAY
      window = _xdotool('search', '--sync', '--onlyvisible', '--name', TITLE).split()[0]
      x, y, w, h = _geometry(window)
      while w < video.shape[2] and demo.poll() is None:  # the window takes the frame's size at the first frame
        time.sleep(0.2)
        x, y, w, h = _geometry(window)
      time.sleep(seconds / 2)
      _xdotool('mousemove', '--window', window, '150', '170', 'click', '1')  # x, y in the frame's pixels
      time.sleep(seconds / 2)
      ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=DISPLAY).save(out)
      _xdotool('key', '--window', window, 'q')
      demo.wait(timeout=60)
    finally:
      if demo.poll() is None:
        demo.kill()
      server.terminate()
      server.wait(timeout=10)
  print(f'wrote {out}')


def _chromium(size: str):
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', f'--window-size={size}',
              '--autoplay-policy=no-user-gesture-required'):
    options.add_argument(arg)
  options.binary_location = shutil.which('chromium') or shutil.which('chromium-browser')
  return webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=options)


def webapp_screenshot(out: str, port: int = 7871) -> None:
  """The web page after tracking a grid on the built-in clip (untrained weights)."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  server = subprocess.Popen([sys.executable, '-m', 'experiments.webapp', '--random_weights', '--port', str(port)],
                            cwd=REPO)
  driver = _chromium('1200,1250')
  try:
    wait = WebDriverWait(driver, 600)
    for _ in range(120):  # the server imports and starts
      try:
        driver.get(f'http://127.0.0.1:{port}')
        break
      except Exception:  # pylint: disable=broad-except
        time.sleep(1.0)
    click = lambda elem_id: wait.until(lambda d: d.find_element(By.ID, elem_id)).click()
    click('tapir-builtin')
    wait.until(lambda d: 'frames of' in d.find_element(By.ID, 'tapir-status').text)
    click('tapir-grid')
    wait.until(lambda d: 'point' in d.find_element(By.ID, 'tapir-points').text)
    click('tapir-run')
    wait.until(lambda d: d.find_element(By.ID, 'tapir-status').text.startswith('Tracked'))
    time.sleep(3.0)  # the result video loads
    driver.execute_script('window.scrollTo(0, 0)')
    time.sleep(0.5)
    driver.save_screenshot(out)
  finally:
    driver.quit()
    server.terminate()
    server.wait(timeout=30)
  print(f'wrote {out}')


def notebook_screenshot(out: str) -> None:
  """The executed demo notebook in headless Chromium, from its "Online" heading down."""
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbconvert  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  notebook = nbformat.read(os.path.join(REPO, 'notebooks', 'tapir_demo.ipynb'), as_version=4)
  with tempfile.TemporaryDirectory() as tmp:
    nbclient.NotebookClient(notebook, timeout=1800, kernel_name='python3',
                            resources={'metadata': {'path': tmp}}).execute()
    html, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    page = os.path.join(tmp, 'notebook.html')
    with open(page, 'w') as f:
      f.write(html)
    driver = _chromium('1100,1000')
    try:
      driver.get('file://' + page)
      time.sleep(2.0)  # the videos load and start
      driver.execute_script(
          "[...document.querySelectorAll('h2')].find(h => h.textContent.startsWith('Online')).scrollIntoView()")
      time.sleep(1.0)
      driver.save_screenshot(out)
    finally:
      driver.quit()
  print(f'wrote {out}')


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default='docs', help='folder for live.png, webapp.png and notebook.png')
  parser.add_argument('--only', default='live,webapp,notebook', help='comma-separated: live, webapp, notebook')
  args = parser.parse_args()
  chosen = args.only.split(',')
  unknown = set(chosen) - {'live', 'webapp', 'notebook'}
  if unknown:
    parser.error(f'--only: unknown {sorted(unknown)}; choose from live, webapp, notebook')
  os.makedirs(args.out, exist_ok=True)
  if 'live' in chosen:
    live_screenshot(os.path.join(args.out, 'live.png'))
  if 'webapp' in chosen:
    webapp_screenshot(os.path.join(args.out, 'webapp.png'))
  if 'notebook' in chosen:
    notebook_screenshot(os.path.join(args.out, 'notebook.png'))


if __name__ == '__main__':
  main()
