/*
 * capture_tags.c — tags from plus addresses and X-Tags when a message is
 * caught (see capture_tags.h).
 *
 * Owns: Mailpit's tag-name cleaning, the plus-address and X-Tags rules,
 * the process-wide switch of the rules.
 * Must never: read past a length it was given, produce a tag with a byte
 * the tags API would refuse (controls), or more than CAPTURE_TAGS_PER_MSG.
 */
#include "store/capture_tags.h"

#include <stdatomic.h>
#include <string.h>
#include <strings.h>

#include "mime/mime.h"

static atomic_uint rules = CAPTURE_TAGS_PLUS | CAPTURE_TAGS_XTAGS;

void capture_tags_set_rules(unsigned flags)
{
	atomic_store(&rules, flags);
}

unsigned capture_tags_rules(void)
{
	return atomic_load(&rules);
}

static bool tag_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.';
}

size_t capture_tag_clean(const char *in, size_t n, char out[CAPTURE_TAG_MAX + 1])
{
	size_t k = 0;
	bool space = false;
	for (size_t i = 0; i < n && k < CAPTURE_TAG_MAX; i++) {
		unsigned char c = (unsigned char)in[i];
		if (!tag_char(c)) {
			space = k > 0; /* leading blanks never count */
			continue;
		}
		if (space) {
			if (k + 1 >= CAPTURE_TAG_MAX)
				break;
			out[k++] = ' ';
			space = false;
		}
		out[k++] = (char)c;
	}
	out[k] = '\0';
	return k;
}

void capture_tag_add(struct capture_tag_set *s, const char *name, size_t n)
{
	char t[CAPTURE_TAG_MAX + 1];
	size_t k = capture_tag_clean(name, n, t);
	if (k == 0 || s->n >= CAPTURE_TAGS_PER_MSG)
		return;
	for (size_t i = 0; i < s->n; i++)
		if (strcasecmp(s->v[i], t) == 0)
			return;
	memcpy(s->v[s->n++], t, k + 1);
}

void capture_tags_plus(const char *addr, struct capture_tag_set *s)
{
	if (!addr)
		return;
	const char *at = strrchr(addr, '@');
	size_t local = at ? (size_t)(at - addr) : 0;
	const char *plus = NULL;
	for (size_t i = 0; i < local; i++)
		if (addr[i] == '+')
			plus = addr + i;
	if (plus && plus > addr)
		capture_tag_add(s, plus + 1, (size_t)(at - plus - 1));
}

static void add_list(const char *p, size_t n, struct capture_tag_set *s)
{
	size_t start = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i == n || p[i] == ',') {
			capture_tag_add(s, p + start, i - start);
			start = i + 1;
		}
	}
}

void capture_tags_xtags(const char *raw, size_t len, struct capture_tag_set *s)
{
	static const char name[] = "X-Tags:";
	size_t pos = 0;
	while (pos < len) {
		const char *l = raw + pos;
		const char *nl = memchr(l, '\n', len - pos);
		size_t ll = nl ? (size_t)(nl - l) : len - pos;
		size_t next = pos + ll + (nl ? 1 : 0);
		size_t body = ll && l[ll - 1] == '\r' ? ll - 1 : ll;
		if (body == 0)
			return; /* the end of the header block */
		if (body >= sizeof(name) - 1 && strncasecmp(l, name, sizeof(name) - 1) == 0) {
			/* the value and its continuation lines, as one list */
			char buf[4096];
			size_t k = 0;
			size_t vl = body - (sizeof(name) - 1);
			if (vl > sizeof(buf))
				vl = sizeof(buf);
			memcpy(buf, l + sizeof(name) - 1, vl);
			k = vl;
			while (next < len && (raw[next] == ' ' || raw[next] == '\t')) {
				const char *c = raw + next;
				const char *cn = memchr(c, '\n', len - next);
				size_t cl = cn ? (size_t)(cn - c) : len - next;
				next += cl + (cn ? 1 : 0);
				if (cl && c[cl - 1] == '\r')
					cl--;
				if (k + cl > sizeof(buf))
					cl = sizeof(buf) - k;
				memcpy(buf + k, c, cl);
				k += cl;
			}
			add_list(buf, k, s);
		}
		pos = next;
	}
}

static void plus_of_list(const struct mime_addrs *a, struct capture_tag_set *s)
{
	for (size_t i = 0; i < a->n; i++)
		capture_tags_plus(a->v[i].addr, s);
}

void capture_tags_derive(const struct mime_msg *mm, const char *raw, size_t len,
                         const char *const *env_to, size_t n_to, unsigned flags,
                         struct capture_tag_set *s)
{
	s->n = 0;
	if (flags & CAPTURE_TAGS_XTAGS)
		capture_tags_xtags(raw, len, s);
	if (flags & CAPTURE_TAGS_PLUS) {
		if (mm) {
			plus_of_list(&mm->to, s);
			plus_of_list(&mm->cc, s);
			plus_of_list(&mm->bcc, s);
		}
		for (size_t i = 0; i < n_to; i++)
			capture_tags_plus(env_to[i], s);
	}
}

bool capture_tags_parse_disable(const char *value, unsigned *out)
{
	unsigned r = CAPTURE_TAGS_PLUS | CAPTURE_TAGS_XTAGS;
	const char *p = value;
	while (p && *p) {
		while (*p == ',' || *p == ' ')
			p++;
		const char *e = p;
		while (*e && *e != ',' && *e != ' ')
			e++;
		size_t n = (size_t)(e - p);
		if (n == 14 && strncasecmp(p, "plus-addresses", n) == 0)
			r &= ~CAPTURE_TAGS_PLUS;
		else if (n == 6 && strncasecmp(p, "x-tags", n) == 0)
			r &= ~CAPTURE_TAGS_XTAGS;
		else if (n)
			return false;
		p = e;
	}
	*out = r;
	return true;
}
