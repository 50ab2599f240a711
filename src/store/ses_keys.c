/*
 * ses_keys.c — SigV4 key pairs derived from DATA/apikeys.master (see
 * ses_keys.h). Owns the master file; must never write a derived secret
 * anywhere, nor log one.
 */
#include "store/ses_keys.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"

static int read_master(const char *path, unsigned char master[SES_MASTER_LEN])
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? TERN_ENOTFOUND : TERN_EIO;
	ssize_t n = read(fd, master, SES_MASTER_LEN);
	close(fd);
	return n == SES_MASTER_LEN ? TERN_OK : TERN_EIO;
}

int ses_master_load(const char *data_dir, bool create, unsigned char master[SES_MASTER_LEN])
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/apikeys.master", data_dir);
	int rc = read_master(path, master);
	if (rc != TERN_ENOTFOUND || !create)
		return rc;
	unsigned char m[SES_MASTER_LEN];
	if (RAND_bytes(m, sizeof(m)) != 1)
		return TERN_EIO;
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		OPENSSL_cleanse(m, sizeof(m));
		return errno == EEXIST ? read_master(path, master) : TERN_EIO;
	}
	bool ok = write(fd, m, sizeof(m)) == (ssize_t)sizeof(m) && fsync(fd) == 0;
	ok = close(fd) == 0 && ok;
	if (ok)
		memcpy(master, m, sizeof(m));
	else
		unlink(path);
	OPENSSL_cleanse(m, sizeof(m));
	return ok ? TERN_OK : TERN_EIO;
}

void ses_key_pair(const unsigned char master[SES_MASTER_LEN], const char *id,
                  char akid[SES_AKID_LEN + 1], char secret[SES_SECRET_LEN + 1])
{
	static const char d[] = "0123456789abcdef";
	unsigned char mac[32];
	unsigned int ml = sizeof(mac);
	HMAC(EVP_sha256(), master, SES_MASTER_LEN, (const unsigned char *)id, strlen(id), mac, &ml);
	for (size_t i = 0; i < 32; i++) {
		secret[2 * i] = d[mac[i] >> 4];
		secret[2 * i + 1] = d[mac[i] & 15];
	}
	secret[SES_SECRET_LEN] = '\0';
	OPENSSL_cleanse(mac, sizeof(mac));
	snprintf(akid, SES_AKID_LEN + 1, "AKTERN%s", id);
	for (char *c = akid + 6; *c; c++)
		if (*c >= 'a' && *c <= 'f')
			*c = (char)(*c - 'a' + 'A');
}

bool ses_akid_to_id(const char *akid, char id[APIKEY_ID_LEN + 1])
{
	if (strlen(akid) != SES_AKID_LEN || memcmp(akid, "AKTERN", 6) != 0)
		return false;
	for (size_t i = 0; i < APIKEY_ID_LEN; i++) {
		char c = akid[6 + i];
		if (c >= 'A' && c <= 'F')
			c = (char)(c - 'A' + 'a');
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
		id[i] = c;
	}
	id[APIKEY_ID_LEN] = '\0';
	return true;
}
