"""The web page (`tapir.tracking.webapp`): its logic without a browser, then the page in headless Chromium.

The browser test needs the `demo` extra (Gradio), selenium, and Chromium with its driver (Debian: chromium,
chromium-driver); it is skipped, saying which is missing, without them. Models are tiny and random.
"""

import glob
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from tapir import video as video_io
from tapir.tracking import webapp
from tests.conftest import save_random_tapir

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(blocks_per_group=(1, 1, 1, 1), num_mixer_blocks=1, mixer_hidden_dim=32, initial_resolution=(32, 32))
T, H, W = 6, 48, 64
BROWSER_WAIT_S = 180  # generous: the first run compiles the model on a shared CPU


@pytest.fixture(scope='module')
def video_path(tmp_path_factory):
  coarse = np.random.default_rng(0).integers(0, 256, (T, H // 8, W // 8, 3), dtype=np.uint8)
  path = tmp_path_factory.mktemp('video') / 'in.mp4'
  video_io.write_video(path, np.kron(coarse, np.ones((1, 8, 8, 1), np.uint8)), fps=12)  # blocky: survives H.264
  return str(path)


@pytest.fixture(scope='module')
def not_a_video(tmp_path_factory):
  path = tmp_path_factory.mktemp('upload') / 'notes.mp4'
  path.write_text('these are notes, not a video\n')
  return str(path)


@pytest.fixture(scope='module')
def trackers(tmp_path_factory):
  """One cache for the module: a tiny offline checkpoint on disk, and random weights (causal for online)."""
  folder = tmp_path_factory.mktemp('checkpoints')
  save_random_tapir(folder / 'tiny_tapir.npy', **TINY)
  (folder / 'README.txt').write_text('not a checkpoint: not offered')
  return webapp.TrackerCache(folder, random_weights=True, model_overrides=TINY)


def test_limits_name_the_bad_setting():
  for bad in (dict(max_upload_mb=0), dict(max_upload_mb='50'), dict(max_frames=0), dict(max_side=1.5),
              dict(max_points=-1)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      webapp.Limits(**bad)


def test_a_good_upload_is_read(video_path):
  info = webapp.check_upload(video_path, webapp.Limits())
  assert (info.num_frames, info.height, info.width) == (T, H, W)
  clip = webapp.load_upload(video_path, webapp.Limits())
  assert clip.video.shape == (T, H, W, 3) and clip.video.dtype == np.uint8
  assert clip.fps == pytest.approx(12) and clip.name == 'in'


def test_a_file_that_is_not_a_video_is_refused(not_a_video, tmp_path):
  with pytest.raises(ValueError, match='notes.mp4 is not a video'):
    webapp.check_upload(not_a_video, webapp.Limits())
  with pytest.raises(ValueError, match='no uploaded file'):
    webapp.check_upload(str(tmp_path / 'missing.mp4'), webapp.Limits())


def test_oversize_long_and_large_uploads_are_refused(video_path):
  size_mb = os.path.getsize(video_path) / 1e6
  with pytest.raises(ValueError, match=r'MB: uploads are limited to .* MB \(max_upload_mb\)'):
    webapp.check_upload(video_path, webapp.Limits(max_upload_mb=size_mb / 2))
  with pytest.raises(ValueError, match=rf'{T} frames: .* \(max_frames\)'):
    webapp.check_upload(video_path, webapp.Limits(max_frames=T - 1))
  with pytest.raises(ValueError, match=rf'{W}x{H} pixels: .* \(max_side\)'):
    webapp.check_upload(video_path, webapp.Limits(max_side=W - 1))


def test_clicks_query_the_centre_of_the_video_pixel():
  assert webapp.click_to_yx([0, 0], 1) == (0.5, 0.5)
  assert webapp.click_to_yx([5, 3], 2) == (1.5, 2.5)  # display pixel (row 3, column 5) at 2x: video pixel (1, 2)
  assert webapp.display_scale((H, W)) == webapp.DISPLAY_SIDE // W
  for bad in ([1], [-1, 0], 'ab', [0.5, 1]):
    with pytest.raises(ValueError, match='index'):
      webapp.click_to_yx(bad, 1)


def test_points_are_checked_and_limited():
  shape = (T, H, W, 3)
  points = webapp.add_point([], 2, 10.5, 20.5, shape, max_points=2)
  points = webapp.add_point(points, 0, 0.5, 0.5, shape, max_points=2)
  assert points == [[2, 10.5, 20.5], [0, 0.5, 0.5]]
  with pytest.raises(ValueError, match=r'too many points: at most 2 \(max_points\)'):
    webapp.add_point(points, 0, 1.5, 1.5, shape, max_points=2)
  with pytest.raises(ValueError, match='t \\(the frame\\)'):
    webapp.add_point([], T, 1.5, 1.5, shape, max_points=2)
  with pytest.raises(ValueError, match='must lie in the'):
    webapp.add_point([], 0, H + 0.5, 1.5, shape, max_points=2)


def test_grid_queries_lie_on_the_chosen_frame_and_are_limited():
  grid = np.asarray(webapp.grid_queries((T, H, W), 3, 2, max_points=9))
  assert grid.shape == (9, 3) and (grid[:, 0] == 2).all() and ((grid[:, 1:] % 1) == 0.5).all()
  assert (grid[:, 1] < H).all() and (grid[:, 2] < W).all()
  with pytest.raises(ValueError, match=r'too many points: 1 \+ a 3 x 3 grid of 9, at most 9'):
    webapp.grid_queries((T, H, W), 3, 2, max_points=9, existing=1)
  with pytest.raises(ValueError, match='frame'):
    webapp.grid_queries((T, H, W), 3, T, max_points=9)
  with pytest.raises(ValueError, match='grid size'):
    webapp.grid_queries((T, H, W), H + 1, 0, max_points=10**6)


def test_the_preview_marks_the_points_of_its_frame(video_path):
  clip = webapp.load_upload(video_path, webapp.Limits())
  s = webapp.display_scale((H, W))
  plain = np.repeat(np.repeat(clip.video[1], s, 0), s, 1)
  points = [[1.0, 20.5, 30.5]]
  marked = webapp.preview_frame(clip.video, 1, points)
  assert marked.shape == (H * s, W * s, 3)
  changed = np.nonzero((marked != plain).any(-1))
  assert changed[0].size and abs(changed[0].mean() - 20.5 * s) < s and abs(changed[1].mean() - 30.5 * s) < s
  np.testing.assert_array_equal(webapp.preview_frame(clip.video, 0, points), np.repeat(np.repeat(
      clip.video[0], s, 0), s, 1))  # the point belongs to frame 1
  assert webapp.describe_points(points) == '1 point(s) on frame(s) 1'


def test_the_builtin_clip_is_a_real_video():
  clip = webapp.builtin_clip(32, 40, 4)
  assert clip.video.shape == (4, 32, 40, 3) and clip.video.dtype == np.uint8 and clip.video.std() > 10
  with pytest.raises(ValueError, match='num_frames'):
    webapp.builtin_clip(32, 32, 0)


def test_only_offered_checkpoints_load(trackers, tmp_path):
  assert trackers.choices() == ['tiny_tapir.npy', webapp.RANDOM_WEIGHTS]
  assert webapp.TrackerCache(tmp_path).choices() == [webapp.RANDOM_WEIGHTS]  # nothing there: random weights
  (tmp_path / 'causal_tapir_checkpoint.npy').write_bytes(b'')
  released = webapp.TrackerCache(tmp_path)
  assert released.choices() == ['causal_tapir_checkpoint.npy']
  assert released.resolve('causal_tapir_checkpoint.npy', webapp.AUTO_PRESET, True) == (
      str(tmp_path / 'causal_tapir_checkpoint.npy'), 'causal_tapir')
  assert trackers.resolve(webapp.RANDOM_WEIGHTS, webapp.AUTO_PRESET, True) == (None, 'causal_tapir')
  with pytest.raises(ValueError, match='checkpoint must be one of'):
    released.get(webapp.RANDOM_WEIGHTS)  # not offered where real checkpoints are and random_weights is off
  with pytest.raises(ValueError, match='checkpoint must be one of'):
    trackers.get('../tiny_tapir.npy')
  with pytest.raises(ValueError, match='preset must be'):
    trackers.get('tiny_tapir.npy', 'nonsense')


@pytest.mark.parametrize('online', [False, True], ids=['offline', 'online'])
def test_a_grid_run_writes_the_painted_video_and_the_tracks(online, trackers, video_path, tmp_path):
  clip = webapp.load_upload(video_path, webapp.Limits())
  tracker = trackers.get(webapp.RANDOM_WEIGHTS if online else 'tiny_tapir.npy', webapp.AUTO_PRESET, online)
  points = webapp.grid_queries(clip.video.shape, 3, 0, max_points=9) + [[2.0, 10.5, 12.5]]
  heard = []
  done = webapp.run_tracking(clip, points, tracker, str(tmp_path), lambda f, text: heard.append(f), trail=2,
                             checkpoint='test')
  assert heard == sorted(heard) and heard[-1] == 1.0 and len(heard) >= (T if online else 3)
  painted, fps = video_io.read_video(done.video_path)
  assert painted.shape == (T, H, W, 3) and fps == pytest.approx(12)
  with np.load(done.tracks_path) as saved:
    assert saved['tracks'].shape == (10, T, 2) and saved['visible'].shape == (10, T)
    np.testing.assert_array_equal(saved['query_points'], np.asarray(points, np.float32))
    assert str(saved['online']) == str(online) and str(saved['checkpoint']) == 'test'
  with pytest.raises(ValueError, match='no query points'):
    webapp.run_tracking(clip, [], tracker, str(tmp_path))


def test_import_tapir_and_the_module_load_no_gradio():
  code = 'import sys, tapir, tapir.tracking.webapp; sys.exit("gradio" in sys.modules)'
  assert subprocess.run([sys.executable, '-c', code], cwd=REPO).returncode == 0


# ---------------------------------------------------------------------------------------------------------------
# The page in a real browser.


def _browser_or_skip() -> tuple[str, str]:
  pytest.importorskip('gradio', reason='the page needs Gradio: pip install -e ".[demo]"')
  pytest.importorskip('selenium', reason='the browser test needs selenium: pip install selenium')
  chromium = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
  driver = shutil.which('chromedriver')
  if not chromium or not driver:
    pytest.skip(f'the browser test needs Chromium and chromedriver (apt-get install chromium chromium-driver); '
                f'found chromium={chromium}, chromedriver={driver}')
  return chromium, driver


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def page(request, tmp_path_factory):
  chromium, driver_path = _browser_or_skip()
  trackers = request.getfixturevalue('trackers')  # after the skip: no model is loaded for nothing
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  demo = webapp.build_app(trackers.checkpoint_dir, trackers=trackers, builtin_shape=(4, 32, 32),
                          work_dir=str(tmp_path_factory.mktemp('work')))
  url = webapp.serve(demo, port=_free_port(), block=False)
  downloads = tmp_path_factory.mktemp('downloads')
  options = webdriver.ChromeOptions()
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1200,900'):
    options.add_argument(arg)
  options.binary_location = chromium
  options.add_experimental_option('prefs', {'download.default_directory': str(downloads),
                                            'download.prompt_for_download': False})
  driver = webdriver.Chrome(service=Service(driver_path), options=options)
  driver.execute_cdp_cmd('Browser.setDownloadBehavior', {'behavior': 'allow', 'downloadPath': str(downloads)})
  try:
    driver.get(url)
    yield driver, downloads
  finally:
    driver.quit()
    demo.close()


@pytest.mark.filterwarnings('ignore:.*no_silent_downcasting', 'ignore:The copy keyword is deprecated')  # Gradio's
def test_the_page_tracks_a_clicked_point_and_serves_the_files(page, video_path, not_a_video):
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  driver, downloads = page
  wait = WebDriverWait(driver, 60)
  text_of = lambda elem_id: driver.find_element(By.ID, elem_id).text
  upload = lambda path: wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#tapir-video input[type=file]')
                                   ).send_keys(path)

  upload(not_a_video)  # refused with a message on the page
  wait.until(lambda d: 'not a video' in text_of('tapir-status'))
  assert 'Traceback' not in driver.page_source
  upload(video_path)
  wait.until(lambda d: f'{T} frames of {W}x{H}' in text_of('tapir-status'))

  image = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#tapir-frame-image img'))
  driver.execute_script('arguments[0].scrollIntoView({block: "center"})', image)
  width, height, natural_w = driver.execute_script(
      'const r = arguments[0].getBoundingClientRect(); return [r.width, r.height, '
      'arguments[0].naturalWidth]', image)
  dx, dy = -width / 4, height / 5  # from the image's centre
  ActionChains(driver).move_to_element_with_offset(image, dx, dy).click().perform()
  wait.until(lambda d: text_of('tapir-points').startswith('1 point'))
  frame_px = width / natural_w * webapp.display_scale((H, W))  # screen pixels per video pixel
  expected_yx = np.array([(height / 2 + dy) / frame_px, (width / 2 + dx) / frame_px])

  driver.find_element(By.ID, 'tapir-run').click()
  WebDriverWait(driver, BROWSER_WAIT_S).until(
      lambda d: (d.find_elements(By.CSS_SELECTOR, '#tapir-result video') or [None])[0] is not None and
      d.find_element(By.CSS_SELECTOR, '#tapir-result video').get_attribute('src'))
  assert text_of('tapir-status').startswith('Tracked 1 points offline')

  wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#tapir-tracks a[download]')).click()
  wait.until(lambda d: glob.glob(str(downloads / '*.npz')) and not glob.glob(str(downloads / '*.crdownload')))
  with np.load(glob.glob(str(downloads / '*.npz'))[0]) as saved:
    assert saved['tracks'].shape == (1, T, 2) and saved['visible'].shape == (1, T)
    t, y, x = saved['query_points'][0]
    assert t == 0 and np.abs(np.array([y, x]) - expected_yx).max() <= 1.0, (y, x, expected_yx)
