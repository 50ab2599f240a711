/* timefmt.c — RFC 5322 §3.3 and RFC 3339 date-times (see timefmt.h). */
#include "core/timefmt.h"

#include <stdio.h>
#include <time.h>

bool tern_rfc5322_date(int64_t t, char *out, size_t outlen)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;

	if (outlen > 0)
		out[0] = '\0';
	if (t < 0 || t > 253402300799LL) /* after 9999-12-31 the year has 5 digits */
		return false;
	time_t tt = (time_t)t;
	if (!gmtime_r(&tt, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
	    tm.tm_mon > 11)
		return false;
	int n = snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday],
	                 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	                 tm.tm_sec);
	if (n <= 0 || (size_t)n >= outlen) {
		if (outlen > 0)
			out[0] = '\0';
		return false;
	}
	return true;
}

/* 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: RFC 3339 has four-digit years. */
#define RFC3339_MIN (-62167219200LL)
#define RFC3339_MAX 253402300799LL

/* The one RFC 3339 writer: the seconds-resolution local time of t shifted by
 * tz_min, then ".mmm" when ms >= 0, then "Z" or the offset. */
static bool rfc3339(int64_t t, int ms, int tz_min, char *out, size_t outlen)
{
	struct tm tm;

	if (outlen > 0)
		out[0] = '\0';
	if (tz_min < -(23 * 60 + 59) || tz_min > 23 * 60 + 59)
		return false;
	int64_t local = t + (int64_t)tz_min * 60;
	if (local < RFC3339_MIN || local > RFC3339_MAX)
		return false;
	time_t tt = (time_t)local;
	if (!gmtime_r(&tt, &tm))
		return false;
	char frac[12] = "", zone[12] = "Z";
	if (ms >= 0)
		snprintf(frac, sizeof(frac), ".%03d", ms);
	if (tz_min != 0) {
		int a = tz_min < 0 ? -tz_min : tz_min;
		snprintf(zone, sizeof(zone), "%c%02d:%02d", tz_min < 0 ? '-' : '+', a / 60, a % 60);
	}
	int n = snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d%s%s", tm.tm_year + 1900,
	                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac, zone);
	if (n <= 0 || (size_t)n >= outlen) {
		if (outlen > 0)
			out[0] = '\0';
		return false;
	}
	return true;
}

bool tern_rfc3339(int64_t t, char *out, size_t outlen)
{
	return rfc3339(t, -1, 0, out, outlen);
}

bool tern_rfc3339_ms(int64_t us, char *out, size_t outlen)
{
	/* floor division: a time before 1970 still has 0..999 milliseconds */
	int64_t secs = us / 1000000, rest = us % 1000000;
	if (rest < 0) {
		secs -= 1;
		rest += 1000000;
	}
	return rfc3339(secs, (int)(rest / 1000), 0, out, outlen);
}

bool tern_rfc3339_offset(int64_t t, int tz_min, char *out, size_t outlen)
{
	return rfc3339(t, -1, tz_min, out, outlen);
}
