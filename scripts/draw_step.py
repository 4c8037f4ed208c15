"""Draws one VCLR training step (docs/train_step.png): the seven crops, the two encoders, the
four losses and the two queues.

  python scripts/draw_step.py [--out=docs/train_step.png]
"""

import argparse

import matplotlib

matplotlib.use('Agg')
from matplotlib import patches  # pylint: disable=g-import-not-at-top
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

ONLINE = '#d6e9f8'
KEY = '#fde2c8'
LOSS = '#e2f2d8'
QUEUE = '#eeeeee'
DATA = '#ffffff'

# (x, y, width, height, fill, text); the figure is 16 x 8 units.
BOXES = {
    'frames': (0.2, 3.1, 2.4, 1.8, DATA,
               'host: 6 uint8 frames\nquery tuple f1 f2 f3\nkey tuple f1\' f2\' f3\'\n'
               '(one per segment)'),
    'augment': (3.2, 3.1, 2.6, 1.8, DATA,
                'on the device:\nMoCo v2 augmentation\n7 crops per video'),
    'query_crops': (6.4, 5.3, 2.6, 1.4, ONLINE,
                    'query tuple (3 crops)\nxq = the anchor\'s crop'),
    'key_crops': (6.4, 1.6, 2.6, 1.4, KEY, 'x1 (anchor again), x2, x3\n+ key tuple (3 crops)'),
    'online': (9.6, 5.3, 2.6, 1.4, ONLINE, 'online encoder\nResNet-50 + 4 heads\n(SGD)'),
    'key': (9.6, 1.6, 2.6, 1.4, KEY, 'EMA key encoder\n(shuffle-BN, no gradient)'),
    'inter': (13.0, 6.3, 2.8, 1.0, LOSS, 'inter: q(xq) vs k1, k2, k3\nagainst the inter queue'),
    'intra': (13.0, 5.0, 2.8, 1.0, LOSS, 'intra: q(xq).k1 beats\nq(xq).k2 and q(xq).k3'),
    'video': (13.0, 3.7, 2.8, 1.0, LOSS, 'video: q_v vs k_v\nagainst the video queue'),
    'order': (13.0, 2.4, 2.8, 1.0, LOSS, 'order: 4-way, both tuples\n(shuffled or not)'),
    'inter_queue': (9.0, 0.1, 1.6, 0.8, QUEUE, 'inter queue\n<- k1 k2 k3'),
    'video_queue': (11.2, 0.1, 1.6, 0.8, QUEUE, 'video queue\n<- k_v'),
}

# (from, to, label, colour); arrows leave the right edge and enter the left edge unless the
# boxes sit above one another.
ARROWS = [
    ('frames', 'augment', '', '#333333'),
    ('augment', 'query_crops', '', '#333333'),
    ('augment', 'key_crops', '', '#333333'),
    ('query_crops', 'online', '', '#1f5f99'),
    ('key_crops', 'key', '', '#b35900'),
    ('online', 'inter', '', '#1f5f99'),
    ('online', 'intra', '', '#1f5f99'),
    ('online', 'video', '', '#1f5f99'),
    ('online', 'order', '', '#1f5f99'),
    ('key', 'inter', '', '#b35900'),
    ('key', 'intra', '', '#b35900'),
    ('key', 'video', '', '#b35900'),
    ('key', 'order', '', '#b35900'),
    ('key', 'inter_queue', '', '#777777'),
    ('key', 'video_queue', 'enqueued after the step', '#777777'),
    ('online', 'key', 'EMA 0.999', '#333333'),
]


def _anchors(a, b):
  """Where an arrow from box ``a`` to box ``b`` starts and ends."""
  ax_, ay, aw, ah = a[:4]
  bx, by, bw, bh = b[:4]
  if bx >= ax_ + aw:  # b lies to the right
    return (ax_ + aw, ay + ah / 2), (bx, by + bh / 2)
  if by + bh <= ay:  # b lies below
    return (ax_ + aw / 2, ay), (bx + bw / 2, by + bh)
  return (ax_ + aw / 2, ay + ah), (bx + bw / 2, by)


def draw(out: str) -> None:
  fig, ax = plt.subplots(figsize=(16, 8))
  ax.set_xlim(0, 16)
  ax.set_ylim(0, 8)
  ax.axis('off')
  for x, y, w, h, fill, text in BOXES.values():
    ax.add_patch(patches.FancyBboxPatch((x, y), w, h, boxstyle='round,pad=0.05', fc=fill,
                                        ec='#444444'))
    ax.text(x + w / 2, y + h / 2, text, ha='center', va='center', fontsize=10)
  for start, end, label, colour in ARROWS:
    p, q = _anchors(BOXES[start], BOXES[end])
    ax.annotate('', xy=q, xytext=p, arrowprops=dict(arrowstyle='->', color=colour))
    if label:
      ax.text((p[0] + q[0]) / 2 + 0.1, (p[1] + q[1]) / 2, label, fontsize=9, color='#555555')
  ax.text(8.0, 7.6, 'One VCLR step per device: loss = inter + intra + video + order, '
          'global-batch mean; logits use the queues before this step\'s keys',
          ha='center', fontsize=11)
  fig.savefig(out, dpi=80, bbox_inches='tight')
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='docs/train_step.png')
  draw(parser.parse_args().out)


if __name__ == '__main__':
  main()
