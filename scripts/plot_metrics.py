"""Train and eval curves of one or more runs, from their metrics.jsonl, as one PNG.

    python -m scripts.plot_metrics /tmp/mnist_inception [/tmp/other_run ...] [--out=curves.png]

Three panels over the step: training loss, training and evaluation accuracy, learning rate.
Several workdirs are overlaid, each labelled with its folder name.
"""

import json
import os
import sys

from absl import app, flags

_OUT = flags.DEFINE_string('out', None, 'The PNG to write; default: metrics.png in the first workdir.')


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


def plot(workdirs: list[str], out: str) -> None:
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
  fig.savefig(out, dpi=100)
  plt.close(fig)


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError('Usage: python -m scripts.plot_metrics WORKDIR [WORKDIR ...] [--out=FILE.png]')
  out = _OUT.value or os.path.join(workdirs[0], 'metrics.png')
  try:
    plot(workdirs, out)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
