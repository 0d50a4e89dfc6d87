#!/bin/bash
# Cold per-file yardsticks at 1M and 5M on this machine: find's lstat walk and rm -rf of a
# hardlink tree (cp -al, untimed), caches dropped before each timed command. Run as root from
# anywhere; needs the cached stores of bench/cold.py --scale (1M and 5M, --median-size 1024).
# The dentry hash line reads dmesg, which may have lost it since boot.
cd "$(dirname "$0")/../.."
out=bench/results/yardstick-cold-1m-5m-$(git rev-parse --short HEAD).txt
{
echo "# Cold yardsticks beside the scale runs: find's lstat walk and rm -rf of a cp -al tree"
echo "date_utc: $(date -u +%FT%TZ)"
echo "commit: $(git rev-parse --short HEAD)"
echo "kernel: $(uname -r)"
echo "dentry_hash_entries: $(dmesg | grep -o 'Dentry cache hash table entries: [0-9]*' | head -1 | grep -o '[0-9]*$')"
echo "load_average_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "file system: ext4 on / (the cached stores' own), virtio disk"
echo "caches: sync; echo 3 > /proc/sys/vm/drop_caches before each timed command"
echo
for n in 1000000 5000000; do
  store=bench/.cache/store-${n}m-50a-seed1-ms1024/store
  files=$(find $store/data -type f | wc -l)
  echo "## $n messages: $files files below data/"
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(date +%s.%N); find $store/data -printf '%s\n' > /dev/null; t1=$(date +%s.%N)
  echo "find data -printf '%s\\n' (cold): $(echo "$t1 - $t0" | bc) s, $(echo "($t1 - $t0) * 1000000 / $files" | bc -l | cut -c1-6) us per file"
  tree=bench/.cache/work/yard-tree
  rm -rf $tree; mkdir -p $tree; cp -al $store/data $tree/data
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(date +%s.%N); rm -rf $tree; t1=$(date +%s.%N)
  echo "rm -rf of a cp -al of data (cold): $(echo "$t1 - $t0" | bc) s, $(echo "($t1 - $t0) * 1000000 / $files" | bc -l | cut -c1-6) us per file"
  echo
done
} > $out 2>&1
