#!/usr/bin/env bash
# Builds the reference Caffe that the `caffe_ref` tests compare with: brocolli-caffe 9.0.2, an
# SSD-based Caffe fork published on PyPI as a source package (see docs/caffe_compat.md).
# CPU only, CMake, Debian's libraries; pycaffe is run from a venv over Debian's python3.
#
#   tools/caffe_ref/build.sh [DEST]      (default DEST: $CAFFE_REF_HOME or .caffe-ref)
#
# DEST ends up holding src/ (the patched source tree, with python/caffe/_caffe.so), venv/ and a
# stamp file named after this script's hash: a second call with the same script does nothing.
# Built with the Python layer (WITH_PYTHON_LAYER), so that users' caffe.Layer classes can be run
# in it as a reference (tests/test_python_layers.py); the fork's CMake option for it adds no define.
# Takes about 12 minutes of CPU on two cores. Nothing here is committed: DEST is ignored by git.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-${CAFFE_REF_HOME:-$here/../../.caffe-ref}}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
version="9.0.2"
stamp="$dest/built-$(sha256sum "$0" | cut -c1-16)"
if [ -f "$stamp" ] && [ -f "$dest/src/python/caffe/_caffe.so" ]; then
  echo "reference Caffe already built in $dest"
  exit 0
fi

debs=(build-essential cmake libboost-system-dev libboost-thread-dev libboost-filesystem-dev
      libboost-regex-dev libboost-python-dev libgoogle-glog-dev libgflags-dev libprotobuf-dev
      protobuf-compiler libhdf5-dev libopenblas-dev python3-dev python3-numpy python3-protobuf
      python3-venv)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "reference Caffe needs these Debian packages: ${missing[*]}" >&2; exit 1
  fi
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pyver="$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pytag="${pyver/./}"
rm -rf "$dest/src" "$dest/build" "$dest/venv" "$dest"/built-*
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m pip --version >/dev/null 2>&1 && pip=(/usr/bin/python3 -m pip) || pip=(python3 -m pip)
"${pip[@]}" download --quiet --no-deps --no-binary :all: "brocolli-caffe==$version" -d "$tmp"
tar xzf "$tmp/brocolli-caffe-$version.tar.gz" -C "$tmp"
mv "$tmp/brocolli-caffe-$version" "$dest/src"
src="$dest/src"

# The source package is written for a conda environment; these edits make it build on Debian.
# Debian names the Boost.Python library after the Python version.
sed -i "s/-lboost_python /-lboost_python$pytag /" "$src/python/CMakeLists.txt"
# net.cpp includes the unit tests' header (which includes gtest) and uses nothing from it.
sed -i -e '/#include.*gtest/d' -e '/#include "caffe\/test\/test_caffe_main.hpp"/d' \
  "$src/src/caffe/net.cpp"
# io.py imports skimage and scipy at import time; only image helpers we never call need them.
sed -i -e 's/^import skimage.io$/skimage = None/' -e 's/^from scipy.ndimage import zoom$/zoom = None/' \
  "$src/python/caffe/io.py"
# The unit tests need gtest; they are not part of the reference.
sed -i 's/^ add_subdirectory(test)/# add_subdirectory(test)/' "$src/src/caffe/CMakeLists.txt"

numpy_inc="$(/usr/bin/python3 -c 'import numpy; print(numpy.get_include())')"
mkdir -p "$dest/build"
cmake -S "$src" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DANACONDA_HOME=/usr \
  -DPYTHON_VERSION="python$pyver" -DBUILD_python=ON -DCPU_ONLY=ON \
  -DCMAKE_CXX_FLAGS="-I/usr/include/hdf5/serial -I$numpy_inc -I/usr/include/python$pyver -DWITH_PYTHON_LAYER -Wno-deprecated-declarations" \
  -DCMAKE_SHARED_LINKER_FLAGS="-L/usr/lib/x86_64-linux-gnu/hdf5/serial -L/usr/lib/$(uname -m)-linux-gnu/hdf5/serial" \
  >"$dest/cmake.log" 2>&1 || { tail -40 "$dest/cmake.log"; exit 1; }
make -C "$dest/build" -j"$(nproc)" pycaffe >"$dest/make.log" 2>&1 || { grep -m20 -B2 -A5 'error' "$dest/make.log"; tail -20 "$dest/make.log"; exit 1; }

/usr/bin/python3 -m venv --system-site-packages "$dest/venv"
PYTHONPATH="$src/python" "$dest/venv/bin/python" -c "import caffe; print('reference Caffe', caffe.__file__)"
touch "$stamp"
