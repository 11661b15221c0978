"""Train and eval curves of one or more runs, from their metrics.jsonl, as one PNG.

    python -m scripts.plot_metrics /tmp/mnist_inception [/tmp/other_run ...] [--out=curves.png]

Three panels over the step: training loss, training and evaluation accuracy, learning rate.
Several workdirs are overlaid, each labelled with its folder name. The default output,
metrics.png in the first workdir, is replaced; a file named by --out only with --overwrite.
"""

import json
import os
import sys

from absl import app, flags

from inception_jax import files

_OUT = flags.DEFINE_string('out', None, 'The PNG to write; default: metrics.png in the first workdir (replaced).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace the --out file if it exists.')


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    raise ValueError(f'{workdir} has no metrics.jsonl; give the --workdir of a training run.')
  lines = []
  with open(path) as f:
    for line in f:
      try:
        lines.append(json.loads(line))
      except ValueError:  # a line cut short by a kill
        continue
  return lines


def plot(workdirs: list[str], out: str, overwrite: bool = False) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4))
  for workdir in workdirs:
    lines = read_metrics(workdir)
    label = os.path.basename(os.path.normpath(workdir))
    series = lambda key: ([l['step'] for l in lines if key in l], [l[key] for l in lines if key in l])
    color = loss_ax.plot(*series('train_loss'), label=label)[0].get_color()
    acc_ax.plot(*series('train_accuracy'), color=color, label=f'{label} train')
    steps, accuracy = series('eval_accuracy')
    acc_ax.plot(steps, accuracy, 'o--', color=color, label=f'{label} eval')
    lr_ax.plot(*series('learning_rate'), color=color, label=label)
  for ax, title in ((loss_ax, 'training loss'), (acc_ax, 'accuracy'), (lr_ax, 'learning rate')):
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  loss_ax.set_yscale('log')
  fig.tight_layout()
  with files.atomic(out, overwrite=overwrite) as f:
    fig.savefig(f, dpi=100, format=os.path.splitext(out)[1][1:] or 'png')
  plt.close(fig)


def main(argv):
  workdirs = argv[1:]
  try:
    if not workdirs:
      raise ValueError(
          'give at least one workdir: python -m scripts.plot_metrics WORKDIR [WORKDIR ...] [--out=FILE.png]'
      )
    inputs = [os.path.join(w, 'metrics.jsonl') for w in workdirs]
    for workdir, path in zip(workdirs, inputs):
      if not os.path.isfile(path):
        raise ValueError(f'{workdir} has no metrics.jsonl; give the --workdir of a training run.')
    # The default, the first workdir's own metrics.png, is replaced; a file named by --out only with --overwrite.
    out = _OUT.value or os.path.join(workdirs[0], 'metrics.png')
    overwrite = _OVERWRITE.value or not _OUT.value
    files.check_output(out, '--out', overwrite=overwrite, overwrite_flag='--overwrite', inputs=inputs)
    plot(workdirs, out, overwrite)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
