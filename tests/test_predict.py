"""What --mode=predict accepts: each file it cannot read named with why, before anything runs."""

import io

from PIL import Image
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import predict


def _jpeg(size=(40, 30)) -> bytes:
  out = io.BytesIO()
  Image.new('RGB', size, (10, 200, 30)).save(out, 'JPEG')
  return out.getvalue()


@pytest.mark.parametrize('content, why', [
    (b'', 'is empty (0 bytes)'),
    (b'not pixels at all', 'is not an image (JPEG, PNG, GIF, BMP)'),
    (_jpeg()[:200], 'is truncated or damaged'),
    (None, 'is a TIFF image; --mode=predict reads JPEG, PNG, GIF, BMP'),
])
def test_a_file_it_cannot_read_is_named_with_why(tmp_path, content, why):
  path = tmp_path / 'photo.jpg'
  if content is None:
    Image.new('RGB', (8, 8)).save(path, 'TIFF')
  else:
    path.write_bytes(content)
  assert predict.unreadable(str(path)).startswith(why)
  with pytest.raises(config_lib.UserError) as error:
    predict.image_paths([str(path)])
  assert str(error.value).startswith(f'--image={path} {why}')


def test_a_folder_keeps_its_readable_images_in_name_order(tmp_path):
  (tmp_path / 'b.jpg').write_bytes(_jpeg())
  (tmp_path / 'a.jpeg').write_bytes(_jpeg((30, 40)))
  (tmp_path / 'c.jpg').write_bytes(b'')
  (tmp_path / 'notes.txt').write_text('not an image')
  assert predict.image_paths([str(tmp_path)]) == [str(tmp_path / 'a.jpeg'),
                                                  str(tmp_path / 'b.jpg')]
  assert predict.unreadable(str(tmp_path / 'b.jpg')) is None
