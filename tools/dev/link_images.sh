#!/bin/sh
# Device side of `pack_for_device.py --pts-only`: for every .pts under DST, hard-link the image
# of the same name from SRC (same relative path), so DST becomes a complete 300W folder.
#   sh tools/dev/link_images.sh .devcarry/ytf68 .devcarry/ytf77
set -e
src=$1; dst=$2
find "$dst" -name '*.pts' | while read -r pts; do
  rel=${pts#"$dst"/}; base=${rel%.pts}
  for ext in jpg png; do
    if [ -f "$src/$base.$ext" ]; then ln -f "$src/$base.$ext" "$dst/$base.$ext"; break; fi
  done
done
echo "$dst: $(find "$dst" -name '*.jpg' -o -name '*.png' | wc -l) images linked"
