"""pytorch-fid 0.3.0's `src/pytorch_fid/fid_score.py`, re-typed line by line for the parity tests.

pytorch-fid imports torchvision (for `transforms.ToTensor`), which does not install beside
this machine's torch, so this file keeps its functions and replaces only that transform,
with torchvision's `to_tensor` for PIL images written out (`_to_tensor`). The network is
pytorch-fid's `InceptionV3` wrapper (pytorch_fid_inception.py) around a given
`fid_inception_v3()`, i.e. its weight loading replaced. Line numbers are fid_score.py's.
"""

import pathlib

import numpy as np
import torch
from PIL import Image
from scipy import linalg
from torch.nn.functional import adaptive_avg_pool2d

IMAGE_EXTENSIONS = {'bmp', 'jpg', 'jpeg', 'pgm', 'png', 'ppm', 'tif', 'tiff', 'webp'}  # l. 73


def _to_tensor(pic):
  """torchvision's `ToTensor()(pic)` for an RGB PIL image: HWC uint8 -> CHW float32 / 255."""
  img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
  img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
  img = img.permute((2, 0, 1)).contiguous()
  return img.to(dtype=torch.get_default_dtype()).div(255)


class ImagePathDataset(torch.utils.data.Dataset):  # l. 77-90

  def __init__(self, files, transforms=None):
    self.files = files
    self.transforms = transforms

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    path = self.files[i]
    img = Image.open(path).convert('RGB')
    if self.transforms is not None:
      img = self.transforms(img)
    return img


def get_activations(files, model, batch_size=50, dims=2048, device='cpu', num_workers=1):  # l. 93-149
  model.eval()
  if batch_size > len(files):
    batch_size = len(files)
  dataset = ImagePathDataset(files, transforms=_to_tensor)
  dataloader = torch.utils.data.DataLoader(
      dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers
  )
  pred_arr = np.empty((len(files), dims))
  start_idx = 0
  for batch in dataloader:
    batch = batch.to(device)
    with torch.no_grad():
      pred = model(batch)[0]
    # If model output is not scalar, apply global spatial average pooling.
    if pred.size(2) != 1 or pred.size(3) != 1:
      pred = adaptive_avg_pool2d(pred, output_size=(1, 1))
    pred = pred.squeeze(3).squeeze(2).cpu().numpy()
    pred_arr[start_idx : start_idx + pred.shape[0]] = pred
    start_idx = start_idx + pred.shape[0]
  return pred_arr


def calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):  # l. 152-206
  mu1 = np.atleast_1d(mu1)
  mu2 = np.atleast_1d(mu2)
  sigma1 = np.atleast_2d(sigma1)
  sigma2 = np.atleast_2d(sigma2)
  assert mu1.shape == mu2.shape, 'Training and test mean vectors have different lengths'
  assert sigma1.shape == sigma2.shape, 'Training and test covariances have different dimensions'
  diff = mu1 - mu2
  # Product might be almost singular
  covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  # Numerical error might give slight imaginary component
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      m = np.max(np.abs(covmean.imag))
      raise ValueError('Imaginary component {}'.format(m))
    covmean = covmean.real
  tr_covmean = np.trace(covmean)
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean


def calculate_activation_statistics(files, model, batch_size=50, dims=2048, device='cpu', num_workers=1):  # l. 209-231
  act = get_activations(files, model, batch_size, dims, device, num_workers)
  mu = np.mean(act, axis=0)
  sigma = np.cov(act, rowvar=False)
  return mu, sigma


def compute_statistics_of_path(path, model, batch_size, dims, device, num_workers=1):  # l. 234-246
  if path.endswith('.npz'):
    with np.load(path) as f:
      m, s = f['mu'][:], f['sigma'][:]
  else:
    files = image_files(path)
    m, s = calculate_activation_statistics(files, model, batch_size, dims, device, num_workers)
  return m, s


def image_files(path):  # l. 240-242
  path = pathlib.Path(path)
  return sorted([file for ext in IMAGE_EXTENSIONS for file in path.glob('*.{}'.format(ext))])


def calculate_fid_given_paths(paths, batch_size, device, dims, model, num_workers=0):  # l. 249-265
  """pytorch-fid's, with `model = InceptionV3([block_idx])` (which downloads the weights) given instead."""
  m1, s1 = compute_statistics_of_path(paths[0], model, batch_size, dims, device, num_workers)
  m2, s2 = compute_statistics_of_path(paths[1], model, batch_size, dims, device, num_workers)
  return calculate_frechet_distance(m1, s1, m2, s2), (m1, s1), (m2, s2)
