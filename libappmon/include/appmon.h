/*
 * appmon.h - application heartbeats to the appmon guest agent (libappmon, -lappmon).
 *
 * The calls of VMware's guest application-monitoring library (vmGuestAppMonitorLib.h) under a
 * new prefix: an application written for vSphere HA builds against appmon with
 *
 *   VMGuestAppMonitorLibError -> AppmonLibError
 *   VMGUESTAPPMONITORLIB_     -> APPMONLIB_
 *   VMGuestAppMonitor_        -> Appmon_
 *
 * and a relink. Each call talks to the local appmon-guest over its API socket, by default
 * /run/appmon/appmon.sock (the environment variable APPMON_SOCKET names another), and waits at
 * most 15 s for its answer (APPMON_TIMEOUT, in seconds, sets another bound). An agent that does
 * not run is an error at once: APPMONLIB_ERROR_NOT_RUNNING.
 *
 * Every function may be called from any thread; calls are serialised over one connection to
 * the agent. After a call fails, Appmon_LastErrorMessage() tells why, for the calling thread.
 */
#ifndef APPMON_H
#define APPMON_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
   APPMONLIB_ERROR_SUCCESS = 0,
   /* Anything else: the host's refusal, a broken answer, a lost connection. */
   APPMONLIB_ERROR_OTHER = 1,
   /* The guest agent is not reachable (vSphere: not running in a VM). */
   APPMONLIB_ERROR_NOT_RUNNING = 2,
   /* Appmon_MarkActive before Appmon_Enable, or after Appmon_Disable. */
   APPMONLIB_ERROR_NOT_ENABLED = 3,
   /* A bad argument: an unknown state for Appmon_PostAppState. */
   APPMONLIB_ERROR_NOT_SUPPORTED = 4,
} AppmonLibError;

/* Start monitoring this application. Recorded by the agent when no host is connected yet. */
AppmonLibError Appmon_Enable(void);

/* Stop monitoring. */
AppmonLibError Appmon_Disable(void);

/* A heartbeat: call it at least once per failure interval (30 s by default) after enabling. */
AppmonLibError Appmon_MarkActive(void);

/* 1 when the host monitors this application, 0 when not, or no host is connected, or the call
 * failed (Appmon_LastErrorMessage() is then set). */
int Appmon_IsEnabled(void);

/* "green", "red" or "gray", to be released with Appmon_Free; NULL when the call failed. */
char *Appmon_GetAppStatus(void);

/* "appStateNeedReset" asks the host to reset this VM now; "appStateOk" takes that back. */
AppmonLibError Appmon_PostAppState(const char *state);

/* Releases what Appmon_GetAppStatus returned; NULL is fine. */
void Appmon_Free(char *status);

/* Why the calling thread's last failed call failed; "" after a success. Valid until the
 * thread's next call. */
const char *Appmon_LastErrorMessage(void);

#ifdef __cplusplus
}
#endif

#endif /* APPMON_H */
