// The page: a menu over the Chat, Models and Jobs pages; a job's live view and its report by route.
import { Layout, Menu } from 'antd';
import { ChatPage } from './pages/ChatPage';
import { JobView } from './pages/JobView';
import { JobsPage } from './pages/JobsPage';
import { ModelsPage } from './pages/ModelsPage';
import { ReportPage } from './pages/ReportPage';
import { navigate, useRoute } from './routing';
import type { Route } from './routing';

function Page({ route }: { route: Route }) {
  switch (route.page) {
    case 'models':
      return <ModelsPage />;
    case 'jobs':
      return <JobsPage />;
    case 'job':
      return <JobView key={route.jobId} jobId={route.jobId} />;
    case 'report':
      return <ReportPage key={route.jobId} jobId={route.jobId} />;
    case 'chat':
      return <ChatPage />;
  }
}

export function App() {
  const route = useRoute();
  const selected = route.page === 'job' || route.page === 'report' ? 'jobs' : route.page;
  return (
    <Layout style={{ minHeight: '100vh' }}>
      <Layout.Header style={{ display: 'flex', alignItems: 'center' }}>
        <div style={{ color: '#fff', fontWeight: 600, marginRight: 24 }}>robopt</div>
        <nav aria-label="Main" style={{ flex: 1 }}>
          <Menu
            theme="dark"
            mode="horizontal"
            selectedKeys={[selected]}
            onClick={({ key }) => navigate(`#/${key}`)}
            items={[
              { key: 'chat', label: 'Chat' },
              { key: 'models', label: 'Models' },
              { key: 'jobs', label: 'Jobs' },
            ]}
          />
        </nav>
      </Layout.Header>
      {/* antd's Layout.Content renders the page's one <main> landmark */}
      <Layout.Content style={{ padding: 24, maxWidth: 1200, width: '100%', margin: '0 auto' }}>
        <Page route={route} />
      </Layout.Content>
    </Layout>
  );
}
