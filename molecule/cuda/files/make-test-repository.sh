#!/bin/sh
# Builds, inside a lab container, a flat apt repository shaped like NVIDIA's CUDA repository
# and signed with a throwaway key, so the cuda role's keyring, Signed-By source and branch
# pin are exercised by a real `apt-get update` without NVIDIA's servers.
# The packages are empty stubs (no driver inside), named like the driver sets the role picks
# on Debian (the compute-only set, the role's default, and the full meta packages), in
# branches 580 and 590, so the pin has a newer branch to refuse.
#   usage: make-test-repository.sh REPO_DIR KEYS_DIR
set -eu
repo="$1"
keys="$2"
mkdir -p "$repo" "$keys"
GNUPGHOME="$(mktemp -d)"
export GNUPGHOME
work="$(mktemp -d)"

stub() {
  root="$work/$1_$2"
  mkdir -p "$root/DEBIAN"
  cat >"$root/DEBIAN/control" <<CONTROL
Package: $1
Version: $2
Architecture: all
Maintainer: segserve lab <lab@segserve.invalid>
Description: empty lab stub named like NVIDIA's $1 (contains no driver)
CONTROL
  dpkg-deb --root-owner-group --build "$root" "$repo/$1_$2_all.deb" >/dev/null
}
for version in 580.95.05-1 590.44.01-1; do
  for package in nvidia-driver-cuda nvidia-kernel-open-dkms nvidia-open cuda-drivers; do
    stub "$package" "$version"
  done
done

cd "$repo"
apt-ftparchive packages . >Packages
gzip -9nkf Packages
apt-ftparchive release . >Release

gpg --batch --passphrase '' --quick-gen-key 'segserve lab test repository <lab@segserve.invalid>' ed25519 sign never
gpg --batch --yes --clearsign --output InRelease Release
gpg --batch --yes --armor --detach-sign --output Release.gpg Release
gpg --armor --export | gpg --dearmor >"$keys/cuda-test-keyring.gpg"
gpg --with-colons --list-keys | awk -F: '/^fpr/ { print $10; exit }' >"$keys/cuda-test-keyring.fpr"

# A second key, never trusted: the role must refuse it for the expected fingerprint.
GNUPGHOME="$(mktemp -d)"
export GNUPGHOME
gpg --batch --passphrase '' --quick-gen-key 'impostor <impostor@segserve.invalid>' ed25519 sign never
gpg --armor --export >"$keys/cuda-impostor-key.asc"
chmod -R a+rX "$repo" "$keys"
