#!/bin/sh
# Rebuilds xsk_steer.o from xsk_steer.c (needs clang with the BPF target: Debian's `clang`).
# The object is committed so that building the crate needs no clang; the test
# `the_committed_xdp_object_is_built_from_its_source` checks it matches its source.
set -eu
cd "$(dirname "$0")"
out=${1:-xsk_steer.o}
clang -O2 -target bpfel -mcpu=v2 -c xsk_steer.c -o "$out"
