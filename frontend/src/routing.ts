// Hash routes (#/models, #/chat, #/jobs, #/jobs/<id>, #/jobs/<id>/report): no router dependency.
import { useEffect, useState } from 'react';

export type Route =
  | { page: 'models' }
  | { page: 'chat' }
  | { page: 'jobs' }
  | { page: 'job'; jobId: string }
  | { page: 'report'; jobId: string };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'models') return { page: 'models' };
  if (parts[0] === 'jobs' && parts[1]) {
    return parts[2] === 'report' ? { page: 'report', jobId: parts[1] } : { page: 'job', jobId: parts[1] };
  }
  if (parts[0] === 'jobs') return { page: 'jobs' };
  return { page: 'chat' };
}

export function jobHref(jobId: string, report = false): string {
  return `#/jobs/${encodeURIComponent(jobId)}${report ? '/report' : ''}`;
}

export function navigate(href: string): void {
  window.location.hash = href.replace(/^#/, '');
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return route;
}
